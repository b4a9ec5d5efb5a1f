"""``--spawn`` with ``upstream_api_key``: the vLLM it starts gets the key, out of sight; the settings reach
the backend (``factory.vllm_engine``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from service.config import Settings
from service.engines.vllm.factory import vllm_engine
from service.engines.vllm.spawn import RUNTIME_LORA_ENV, VllmCommand
from tests.conftest import API_KEY


def test_the_key_goes_in_the_environment_not_the_command_line(tmp_path: Path) -> None:
    command = VllmCommand("python", tmp_path, "m", 1, api_key=SecretStr("s3cret"))
    assert command.env() == {**RUNTIME_LORA_ENV, "VLLM_API_KEY": "s3cret"}
    assert "s3cret" not in " ".join(command.argv()) and "s3cret" not in repr(command)
    assert "VLLM_API_KEY" not in VllmCommand("python", tmp_path, "m", 1).env()


def test_the_upstream_settings_reach_the_backend(tmp_path: Path) -> None:
    settings = Settings(
        api_key=API_KEY,
        engine="vllm",
        upstream=["https://vllm.svc:8000", "http://10.0.0.9:8000"],
        upstream_api_key=SecretStr("k"),
        upstream_resolve_interval=3.5,
    )
    engine = vllm_engine(settings)
    assert engine.hop.auth == [(b"authorization", b"Bearer k")]
    assert [r.name for r in engine.router.replicas] == ["10.0.0.9:8000"]  # an IP: never looked up
    assert [t.name for t in engine.watch.targets] == ["vllm.svc:8000"]  # a name: looked up
    assert engine.watch._resolve_interval == 3.5
