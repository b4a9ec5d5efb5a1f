"""The processes a benchmark starts (the gateway, the bare relay, a stand-in) and the world they serve.

Each runs as a child process, as in production: its CPU time is its own (``probe.cpu_seconds``)
and it can be pinned to a core of its own (``probe.own_core``). vLLM itself: ``vllm_server``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from loadtests.common import FLOOR, MODEL, Target

# Limits on the tenant and its departments, far above what a bench sends: every request pays for
# admission and settlement (service/accounting.py) as a deployment with limits does, none is refused.
TENANTS = """
tenants:
  acme:
    default_department: plain
    limits: {requests_per_minute: 100000000, tokens_per_minute: 1000000000000, tokens_per_day: 1000000000000}
    departments:
      plain:
        limits: {requests_per_minute: 100000000, concurrent_requests: 100000}
      it: {adapter: acme-it}
      legal: {adapter: acme-legal}
"""


def build_world(root: Path, model_dir: Path, served: str = MODEL) -> str:
    """Registry with two demo adapters on ``model_dir`` (served as ``served``), tenants file, an API
    key for acme. Returns the key."""
    from adapters.demo import build
    from service.keys import KeyStore
    from service.registry import Registry
    from service.tenancy import TenantDirectory

    registry = Registry(root / "registry", served, base_aliases=(str(model_dir), model_dir.name))
    for seed, name in ((1, "acme-it"), (2, "acme-legal")):
        trained = build(model_dir, root / "trained" / name, seed=seed)
        adapter = registry.publish(trained, name=name, level="L2")
        registry.promote(name, adapter.ref)
    (root / "tenants.yaml").write_text(TENANTS)
    (root / "prompts").mkdir(exist_ok=True)
    return KeyStore(root / "keys.json", TenantDirectory(root / "tenants.yaml", served)).create("acme")[1]


def start_gateway(
    root: Path, port: int, engine: list[str], model_dir: Path, log: Path, served: str = MODEL
) -> subprocess.Popen:
    """``loragate serve`` on the world in ``root``, with ``engine``'s flags; started, ready."""
    args = [
        str(Path(".venv/bin/loragate").resolve()), "serve", "--port", str(port), "--log-level", "warning",
        "--model-path", str(model_dir), "--model-name", served, "--dtype", "float32",
        "--tenants-file", str(root / "tenants.yaml"), "--keys-file", str(root / "keys.json"),
        "--registry-dir", str(root / "registry"), "--prompts-dir", str(root / "prompts"),
        "--max-batch-size", "16", "--default-max-tokens", "64", *engine,
    ]  # fmt: skip
    env = {**os.environ, "LORAGATE_API_KEY": "sk-bench-" + "x" * 24}
    with log.open("ab") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the gateway did not become ready; see {log}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def spawn_module(log: Path, module: str, *argv: str) -> subprocess.Popen:
    """``python -m module argv...``, its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", module, *argv], stdout=out, stderr=subprocess.STDOUT)


def wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def start_floor(
    port: int, upstream: str, models: dict[str, str], log: Path
) -> tuple[subprocess.Popen, Target]:
    """The bare relay (``floor_relay``) in front of ``upstream``, answering, and its target."""
    relay = spawn_module(log, "loadtests.floor_relay", str(port), upstream)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", relay)
    except RuntimeError:
        stop(relay)
        raise
    return relay, Target(FLOOR, f"http://127.0.0.1:{port}/v1/chat/completions", {}, models, False)
