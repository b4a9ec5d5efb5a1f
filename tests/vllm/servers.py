"""Real vLLM (CPU build) servers for the integration suite, started from the cached venv."""

from __future__ import annotations

from pathlib import Path

from loadtests.vllm_server import VLLM_PYTHON, VllmServer
from service.engines.vllm.spawn import VllmCommand
from tests.conftest import TINY_MODEL, free_port

__all__ = ["CPU_FLAGS", "LONG_REQUEST_TOKENS", "MAX_MODEL_LEN", "VLLM_PYTHON", "VllmServer", "tiny_server"]

MAX_MODEL_LEN = 8192  # the tiny model's KV cache is 512 bytes a token: 4 MB for a full context
# Half a minute of work or more for a request a client leaves early. vLLM makes the tiny model's
# tokens fast, and on a loaded 2-core runner its API server lags its engine by seconds: shorter
# requests (900, 980 tokens) were over before the client had read its first chunks.
LONG_REQUEST_TOKENS = 8000
CPU_FLAGS = "--kv-cache-memory-bytes 256M --max-num-seqs 32"  # vLLM on CPU wants a KV size; keep it small


def tiny_server(model_dir: Path, log_dir: Path) -> VllmServer:
    """A replica of the tiny test model: float32 (bf16 drifts from transformers' tokens), LoRA r <= 16,
    tool calling with the hermes parser, compact structured output (the spawn's defaults)."""
    port = free_port()
    command = VllmCommand(
        python=str(VLLM_PYTHON),
        model_path=model_dir,
        served_name=TINY_MODEL,
        port=port,
        dtype="float32",
        max_lora_rank=16,  # the factory's recipes train r=16
        max_loras=2,
        max_model_len=MAX_MODEL_LEN,
        extra_args=CPU_FLAGS,
        tool_call_parser="hermes",  # SmolLM2's template shows no tools, but the parser reads <tool_call>
    )
    return VllmServer(command, log_dir / f"vllm-{port}.log")
