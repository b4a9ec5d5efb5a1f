"""Two gateways on one machine, sharing what a cluster shares: one Redis, one PostgreSQL, one S3 server.

Two ``loragate serve`` processes (real uvicorn, the embedded engine on the tiny model) with
``limits_backend redis``, one PostgreSQL for ``ledger_url`` and ``state_url``, and the adapter
registry on ``moto_server`` (``registry_url s3://...``). Everything an admin does goes through
gateway 1's admin API; gateway 2 must see it:

- the tenants document stored through gateway 1 is in force on gateway 2;
- a key created through gateway 1 works on gateway 2's next request; revoked, it stops there too;
- a promote through gateway 1 serves the new version on gateway 2 (within the registry's alias TTL);
- a department's rate limit holds for both together.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.planning import SERVED_ADAPTER_HEADER
from tests.conftest import TINY_MODEL, free_port
from tests.demo_adapters import make_adapter
from tests.ledger.pg import PostgresServer
from tests.limits.conftest import redis_server, redis_url  # noqa: F401  # the real redis-server

ROOT = Path(__file__).resolve().parents[2]
API_KEY, ADMIN_KEY = "sk-multi-0123456789abcdef", "sk-multi-admin-0123456789abcdef"
TENANTS = """
tenants:
  acme:
    default_department: it
    departments:
      it: {adapter: acme-it}
      limited:
        limits: {requests_per_minute: 4}
"""
REVOKE_BOUND = 2.5  # seconds: the watcher's 2 s poll, plus a query; LISTEN/NOTIFY makes it milliseconds


def _s3_parts() -> tuple[Any, Any, Any]:
    from service.registry_store_s3 import ALIAS_TTL, S3Store
    from tests.registry.s3_server import CREDENTIALS, MOTO_SERVER, MotoServer

    if MOTO_SERVER is None:
        reason = "moto_server not found: pip install 'moto[server]'"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return (ALIAS_TTL, S3Store, (CREDENTIALS, MotoServer))


@pytest.fixture
def moto_endpoint(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    _, _, (credentials, server_class) = _s3_parts()
    server = server_class(tmp_path / "moto.log").start()
    yield server.endpoint, credentials
    server.stop()


class Gateway:
    def __init__(self, root: Path, name: str, flags: list[str], env: dict[str, str]):
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.log = root / f"{name}.log"
        base = {k: v for k, v in os.environ.items() if not k.upper().startswith("LORAGATE_")}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port),
                 "--registry-cache-dir", str(root / f"{name}-cache"), *flags],
                cwd=ROOT, env=base | env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.admin = httpx.Client(
            base_url=self.origin, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.origin}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.origin} did not become ready:\n{self.log.read_text()[-3000:]}")

    def chat(self, key: str, department: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} | ({"X-Department": department} if department else {})
        body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        return httpx.post(f"{self.origin}/v1/chat/completions", json=body, headers=headers, timeout=60)

    def stop(self) -> None:
        self.admin.close()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def test_two_gateways_share_keys_tenants_adapters_and_limits(
    tmp_path: Path,
    tiny_model_dir: Path,
    postgres: PostgresServer,
    redis_url: str,  # noqa: F811
    moto_endpoint: tuple[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alias_ttl, s3_store, _ = _s3_parts()
    endpoint, credentials = moto_endpoint
    for name, value in credentials.items():  # for this process's own S3 client (publishing the adapters)
        monkeypatch.setenv(name, value)
    import boto3  # type: ignore[import-untyped]

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="adapters")
    registry_url = "s3://adapters/registry"
    from service.registry import Registry

    store = s3_store(registry_url, tmp_path / "publisher", endpoint_url=endpoint)
    registry = Registry(store, TINY_MODEL, base_aliases=(str(tiny_model_dir),))
    for seed in (1, 2):
        folder = make_adapter(tiny_model_dir, tmp_path / f"lora-{seed}", seed=seed)
        registry.publish(folder, name="acme-it-lora", level="L2")
    registry.promote("acme-it", "acme-it-lora@1")

    flags = [
        "--engine", "local", "--model-path", str(tiny_model_dir), "--model-name", TINY_MODEL,
        "--dtype", "float32", "--threads", "1", "--max-batch-size", "8", "--log-level", "warning",
        "--prompts-dir", str(tmp_path / "prompts"), "--registry-url", registry_url,
        "--s3-endpoint-url", endpoint, "--limits-backend", "redis", "--redis-url", redis_url,
        "--state-url", postgres.create_database("state_multi"),
        "--ledger-url", postgres.create_database("ledger_multi"),
    ]  # fmt: skip
    env = credentials | {"LORAGATE_API_KEY": API_KEY, "LORAGATE_ADMIN_API_KEY": ADMIN_KEY}
    first, second = Gateway(tmp_path, "gateway-1", flags, env), Gateway(tmp_path, "gateway-2", flags, env)
    try:
        first.wait_ready()
        second.wait_ready()

        stored = first.admin.put("/admin/v1/tenants", json={"yaml": TENANTS})
        assert stored.status_code == 200, stored.text
        _until(lambda: second.admin.get("/admin/v1/tenants").json()["version"] == 1, REVOKE_BOUND)

        created = first.admin.post("/admin/v1/keys", json={"tenant": "acme"})
        assert created.status_code == 201, created.text
        key, key_id = created.json()["key"], created.json()["id"]
        answer = second.chat(key)  # at once: gateway 2 asks the database about a key it has not seen
        assert answer.status_code == 200, answer.text
        assert answer.headers[SERVED_ADAPTER_HEADER] == "acme-it-lora@1"

        promote = {"alias": "acme-it", "ref": "acme-it-lora@2"}
        promoted = first.admin.post("/admin/v1/adapters/promote", json=promote)
        assert promoted.status_code == 200, promoted.text
        started = time.monotonic()
        _until(lambda: second.chat(key).headers[SERVED_ADAPTER_HEADER] == "acme-it-lora@2", alias_ttl + 1)
        print(f"promote seen by gateway 2 after {time.monotonic() - started:.2f} s (alias TTL {alias_ttl} s)")

        statuses = [gateway.chat(key, "limited").status_code for _ in range(4) for gateway in (first, second)]
        assert sorted(statuses) == [200] * 4 + [429] * 4, statuses  # 4 a minute for both, not 4 each

        assert first.admin.delete(f"/admin/v1/keys/{key_id}").status_code == 200
        started = time.monotonic()
        _until(lambda: second.chat(key).status_code == 401, REVOKE_BOUND)
        print(f"revocation seen by gateway 2 after {(time.monotonic() - started) * 1e3:.0f} ms")
        assert first.chat(key).status_code == 401
    finally:
        first.stop()
        second.stop()


def _until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.01)
