"""A real gateway over HTTP serving an adapter that lives only in an s3:// registry; the commands and
the admin API change its aliases, and the gateway's next requests follow."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import openai
import pytest

from service import cli
from service.keys import KeyStore
from service.registry import Registry
from service.registry_store_s3 import ALIAS_TTL, S3Store
from service.tenancy import TenantDirectory

from ..conftest import TINY_MODEL, LiveServer, make_settings
from .s3_server import MotoServer

ADMIN_KEY = "sk-admin-0123456789abcdef0123"
TENANTS = """
tenants:
  acme:
    default_department: it
    departments:
      it: {adapter: acme-it}
"""


def run(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_gateway_serves_an_adapter_from_s3_and_follows_promotes(
    moto: MotoServer,
    s3_url: str,
    adapter_dirs: list[Path],
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    factory_cache = tmp_path / "factory-cache"
    factory = Registry(
        S3Store(s3_url, factory_cache, endpoint_url=moto.endpoint),
        TINY_MODEL,
        base_aliases=(str(tiny_model_dir),),
    )
    for folder in adapter_dirs:
        factory.publish(folder, name="acme-it-lora", level="L2")
    factory.promote("acme-it", "acme-it-lora@1")
    shutil.rmtree(factory_cache)  # the adapters now live in the bucket only
    (tmp_path / "tenants.yaml").write_text(TENANTS)
    (tmp_path / "prompts").mkdir()
    cache = tmp_path / "gateway-cache"
    settings = make_settings(
        tiny_model_dir,
        tenants_file=tmp_path / "tenants.yaml",
        keys_file=tmp_path / "keys.json",
        prompts_dir=tmp_path / "prompts",
        registry_dir=tmp_path / "no-such-registry",
        registry_url=s3_url,
        registry_cache_dir=cache,
        s3_endpoint_url=moto.endpoint,
        admin_api_key=ADMIN_KEY,
    )
    _, key = KeyStore(settings.keys_file, TenantDirectory(settings.tenants_file, TINY_MODEL)).create("acme")

    with LiveServer(settings) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)

        def served() -> str:
            raw = client.chat.completions.with_raw_response.create(
                model=TINY_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0
            )
            assert raw.parse().choices[0].message.content is not None
            return raw.headers["x-loragate-adapter"]

        assert served() == "acme-it-lora@1"
        assert sorted(p.name for p in (cache / "acme-it-lora").iterdir()) == ["1"]  # synced on first use
        assert not (tmp_path / "no-such-registry").exists()

        # a promote from another host's command line: the gateway's next requests, within the TTL
        config = tmp_path / "cli.yaml"
        config.write_text(f"model_name: {TINY_MODEL}\nmodel_path: {tiny_model_dir}\n")
        monkeypatch.setenv("LORAGATE_S3_ENDPOINT_URL", moto.endpoint)
        where = [
            "--config",
            str(config),
            "--registry-url",
            s3_url,
            "--registry-cache-dir",
            str(tmp_path / "cli"),
        ]
        assert run(["adapters", "promote", "acme-it", "acme-it-lora@2", *where], capsys)[:2] == (
            0, "acme-it -> acme-it-lora@2\n"
        )  # fmt: skip
        promoted = time.monotonic()
        while (now := served()) != "acme-it-lora@2":
            assert now == "acme-it-lora@1" and time.monotonic() - promoted < ALIAS_TTL + 1
            time.sleep(0.05)

        # the admin API of the gateway: a rollback is its own write, seen at once
        admin = httpx.Client(base_url=f"http://127.0.0.1:{server.port}/admin/v1", timeout=30)
        admin.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        rolled = admin.post("/adapters/rollback", json={"alias": "acme-it"})
        assert rolled.status_code == 200, rolled.text
        assert served() == "acme-it-lora@1"
        listing = admin.get("/adapters").json()
        assert [v["ref"] for v in listing["data"][0]["versions"]] == ["acme-it-lora@1", "acme-it-lora@2"]
        assert listing["aliases"] == [{"alias": "acme-it", "current": "acme-it-lora@1", "history": []}]

    # a vLLM host's sidecar: every version an alias serves or can roll back to, into its own cache
    code, out, err = run(
        ["adapters", "sync", *where[:4], "--registry-cache-dir", str(tmp_path / "vllm")], capsys
    )
    assert (code, err) == (0, "")
    assert out == f"acme-it-lora@1 -> {tmp_path / 'vllm' / 'acme-it-lora' / '1'}\n"
    code, out, _ = run(["adapters", "list", *where], capsys)
    assert code == 0 and "acme-it                 acme-it-lora@1" in out and "acme-it-lora@2" in out
