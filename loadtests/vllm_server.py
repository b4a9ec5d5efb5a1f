"""A vLLM OpenAI server as a child process (own process group), for the benchmark and the vllm tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from service.engines.vllm.spawn import VllmCommand

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))


class VllmServer:
    def __init__(self, command: VllmCommand, log: Path):
        self.command, self.log = command, log
        self.url = command.url
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> VllmServer:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command.argv(),
                env={**os.environ, **self.command.env()},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
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
        # vLLM's API server can take seconds to answer while it streams on a loaded machine
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.split("{", 1)[0].split(" ", 1)[0] == name
        )


def start_cpu_vllm(
    model_dir: Path, served_name: str, port: int, log: Path, *, max_lora_rank: int, max_num_seqs: int
) -> VllmServer:
    """vLLM's CPU build on ``model_dir``: float32, two adapter slots, 1 GB of KV cache; started, healthy."""
    command = VllmCommand(
        python=str(VLLM_PYTHON), model_path=model_dir, served_name=served_name, port=port,
        dtype="float32", max_lora_rank=max_lora_rank, max_loras=2, max_model_len=2048,
        extra_args=f"--kv-cache-memory-bytes 1G --max-num-seqs {max_num_seqs}",
    )  # fmt: skip
    return VllmServer(command, log).start().wait_healthy()
