"""Real vLLM (CPU build) servers for the integration suite, started from the cached venv."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from service.engines.vllm_spawn import RUNTIME_LORA_ENV, VllmCommand
from tests.conftest import TINY_MODEL, free_port

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
CPU_FLAGS = "--kv-cache-memory-bytes 256M --max-num-seqs 32"  # vLLM on CPU wants a KV size; keep it small


def vllm_command(model_dir: Path, port: int) -> VllmCommand:
    return VllmCommand(
        python=str(VLLM_PYTHON),
        model_path=model_dir,
        served_name=TINY_MODEL,
        port=port,
        dtype="float32",  # bf16 drifts from transformers' tokens
        max_lora_rank=8,
        max_loras=2,
        max_model_len=1024,
        extra_args=CPU_FLAGS,
    )


class VllmServer:
    """One ``vllm.entrypoints.openai.api_server`` process in its own process group."""

    def __init__(self, model_dir: Path, log_dir: Path):
        self.command = vllm_command(model_dir, free_port())
        self.url = self.command.url
        self.log = log_dir / f"vllm-{self.command.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> VllmServer:
        env = {**os.environ, **RUNTIME_LORA_ENV}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command.argv(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def wait_healthy(self, timeout: float = 300) -> VllmServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"vLLM at {self.url} was not healthy within {timeout} s; see {self.log}")

    def kill(self) -> None:
        """SIGKILL, as a crash would: no goodbye to clients."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def models(self) -> list[str]:
        return [m["id"] for m in httpx.get(f"{self.url}/v1/models", timeout=5).json()["data"]]

    def gauge(self, name: str) -> float:
        """A ``vllm:`` gauge's value, summed over its label sets."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.split("{", 1)[0].split(" ", 1)[0] == name
        )
