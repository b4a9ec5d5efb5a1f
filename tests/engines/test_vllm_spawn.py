"""--spawn: the vLLM command line, and a supervisor that restarts a dead server and stops it on shutdown."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from service.app import vllm_engine
from service.config import Settings
from service.engines.vllm.engine import VllmEngine
from service.engines.vllm.spawn import STRUCTURED_OUTPUT, VllmCommand, VllmSupervisor, lora_rank_limit
from tests.conftest import API_KEY


@pytest.mark.parametrize(("ranks", "limit"), [([], 8), ([4], 8), ([8, 16], 16), ([17], 32), ([300], 320)])
def test_max_lora_rank_is_the_smallest_allowed_value_that_fits(ranks: list[int], limit: int) -> None:
    assert lora_rank_limit(ranks) == limit


def test_a_rank_beyond_vllm_is_refused() -> None:
    with pytest.raises(ValueError, match="larger than vLLM serves"):
        lora_rank_limit([1024])


def test_the_command_has_the_multi_lora_flags(tmp_path: Path) -> None:
    command = VllmCommand(
        python="/opt/v/bin/python",
        model_path=tmp_path,
        served_name="m",
        port=8011,
        dtype="float32",
        max_lora_rank=16,
        max_loras=2,
        max_model_len=1024,
        extra_args="--kv-cache-memory-bytes 256M",
    )
    argv = command.argv()
    assert argv[:3] == ["/opt/v/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(argv)
    for flag in (
        "--enable-lora",
        "--max-lora-rank 16",
        "--max-loras 2",
        "--served-model-name m",
        "--dtype float32",
        "--max-model-len 1024",
        "--port 8011",
        "--kv-cache-memory-bytes 256M",
    ):
        assert flag in joined
    assert command.url == "http://127.0.0.1:8011"


def test_spawn_settings_size_the_rank_from_the_registry(tmp_path: Path, tiny_model_dir: Path) -> None:
    from service.registry import Registry
    from tests.demo_adapters import make_adapter

    registry = Registry(tmp_path / "registry", "m", base_aliases=(str(tiny_model_dir),))
    registry.publish(make_adapter(tiny_model_dir, tmp_path / "a", rank=32), name="big", level="L2")
    settings = Settings(
        api_key=API_KEY,
        model_name="m",
        engine="vllm",
        spawn=True,
        registry_dir=tmp_path / "registry",
        model_path=tiny_model_dir,
        vllm_port=8123,
    )
    engine = vllm_engine(settings)
    assert isinstance(engine, VllmEngine) and engine.supervisor is not None
    argv = engine.supervisor.command.argv()
    assert "--max-lora-rank 32" in " ".join(argv)
    assert "--enable-auto-tool-choice --tool-call-parser hermes" in " ".join(argv)  # the settings' default
    assert [r.url for r in engine.router.replicas] == ["http://127.0.0.1:8123"]


def test_tool_calling_and_compact_json_flags(tmp_path: Path) -> None:
    with_parser = VllmCommand("python", tmp_path, "m", 1, tool_call_parser="llama3_json").argv()
    assert with_parser[-5:] == [
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "llama3_json",
        "--structured-outputs-config",
        STRUCTURED_OUTPUT,
    ]
    assert json.loads(STRUCTURED_OUTPUT) == {"backend": "xgrammar", "disable_any_whitespace": True}
    bare = VllmCommand("python", tmp_path, "m", 1, compact_json=False, extra_args="--x 1").argv()
    assert "--enable-auto-tool-choice" not in bare and "--tool-call-parser" not in bare
    assert "--structured-outputs-config" not in bare
    assert bare[-2:] == ["--x", "1"]  # the operator's own flags come last, and win


def fake_python(tmp_path: Path, body: str) -> str:
    """A stand-in for vLLM's Python: a shell script that ignores its arguments."""
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


async def test_a_dead_server_is_restarted(tmp_path: Path) -> None:
    marker = tmp_path / "starts"
    python = fake_python(tmp_path, f"echo x >> {marker}; exit 3")
    supervisor = VllmSupervisor(VllmCommand(python, tmp_path, "m", 1), max_backoff=0.05, backoff=0.01)
    await supervisor.start()
    for _ in range(200):
        if supervisor.restarts >= 2:
            break
        await asyncio.sleep(0.02)
    await supervisor.close()
    assert supervisor.restarts >= 2
    assert len(marker.read_text().split()) >= 2


async def test_close_stops_the_server_and_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    python = fake_python(tmp_path, f"sleep 60 & echo $! > {pids}; wait")
    supervisor = VllmSupervisor(VllmCommand(python, tmp_path, "m", 1))
    await supervisor.start()
    for _ in range(200):
        if pids.exists() and pids.read_text().strip():
            break
        await asyncio.sleep(0.02)
    child = int(pids.read_text())
    await supervisor.close(grace=5)
    assert supervisor.process is not None and supervisor.process.returncode is not None
    async with asyncio.timeout(10):  # the grandchild went with its group (it dies when next scheduled)
        while alive(child):
            await asyncio.sleep(0.02)
    assert supervisor.restarts == 0


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
