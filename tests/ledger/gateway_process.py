"""A real gateway process (``python -m service.cli serve --engine vllm``) in front of ``instant_openai``.

For tests that must kill the gateway itself (``kill -9``): a uvicorn server in a thread of the
test's own process (``tests.conftest.LiveServer``) cannot be killed alone. The stand-in answers at
once, so requests are many and short, and most of what runs is the gateway's own work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.keys import KeyStore
from service.tenancy import TenantDirectory
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = "SmolLM2-135M-Instruct"  # what instant_openai serves
# Limits far above what a test sends: each request is admitted and settled, none is refused.
TENANTS = """
tenants:
  acme:
    default_department: it
    limits: {requests_per_minute: 100000000, tokens_per_minute: 1000000000000}
    departments:
      it:
        limits: {requests_per_minute: 100000000, concurrent_requests: 100000}
      legal: {}
"""


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    url: str  # .../v1
    key: str
    ledger: Path  # the SQLite file of its usage ledger


def _python(*args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LORAGATE_")}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{url} did not answer:\n{log.read_text()[-3000:]}")


def start_stand_in(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = _python("-m", "loadtests.instant_openai", str(port), log=root / "stand-in.log")
    url = f"http://127.0.0.1:{port}"
    _wait_ready(f"{url}/health", process, root / "stand-in.log")
    return process, url


def start_gateway(root: Path, upstream: str, *flags: str) -> Gateway:
    """A world of its own in ``root`` (tenants file, a key, the ledger), the gateway started and ready."""
    (root / "tenants.yaml").write_text(TENANTS)
    (root / "prompts").mkdir(exist_ok=True)
    key = KeyStore(root / "keys.json", TenantDirectory(root / "tenants.yaml", MODEL)).create("acme")[1]
    port, ledger = free_port(), root / "usage.db"
    process = _python(
        "-m", "service.cli", "serve", "--port", str(port), "--log-level", "warning",
        "--engine", "vllm", "--upstream", upstream, "--model-name", MODEL,
        "--tenants-file", str(root / "tenants.yaml"), "--keys-file", str(root / "keys.json"),
        "--registry-dir", str(root / "registry"), "--prompts-dir", str(root / "prompts"),
        "--ledger-url", f"sqlite:///{ledger}", *flags,
        log=root / "gateway.log",
    )  # fmt: skip
    _wait_ready(f"http://127.0.0.1:{port}/ready", process, root / "gateway.log")
    return Gateway(process, f"http://127.0.0.1:{port}/v1", key, ledger)
