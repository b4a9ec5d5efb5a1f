"""One typed fake engine, for the gateway paths the real model cannot produce on demand.

Use it through the app factory: ``create_app(settings, engine_factory=lambda s: fake)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from service.domain import Delta, FinishReason, GenerationRequest
from service.engines.base import EngineHealth
from service.errors import EngineUnavailableError


@dataclass
class FakeEngine:
    """Replays ``script`` for each of the ``n`` choices.

    - ``ready=False``: ``health()`` says not ready and ``stream`` raises 503, as the real engine does.
    - ``fail_at_start``: raised by ``stream`` before its first delta.
    - ``fail_mid_stream``: raised after the first delta of choice 0.
    """

    model_name: str = "fake-model"
    max_context: int = 4096
    script: Sequence[str] = ("Hello", ",", " world")
    finish_reason: FinishReason = "stop"
    prompt_tokens: int = 7
    ready: bool = True
    fail_at_start: BaseException | None = None
    fail_mid_stream: BaseException | None = None
    requests: list[GenerationRequest] = field(default_factory=list)
    started: bool = False
    closed: bool = False
    aborted: int = 0  # streams closed before their last delta
    adapters: dict[str, Path] = field(default_factory=dict)  # what ensure_adapter registered

    async def start(self) -> None:
        self.started = True

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.requests.append(request)
        if not self.ready:
            raise EngineUnavailableError("The model is still loading; retry shortly.")
        if self.fail_at_start is not None:
            raise self.fail_at_start
        finished = 0
        try:
            for index in range(request.n):
                for position, text in enumerate(self.script):
                    if self.fail_mid_stream is not None and position == 1:
                        raise self.fail_mid_stream
                    yield Delta(index, text)
                yield Delta(index, "", self.finish_reason, self.prompt_tokens, len(self.script))
                finished += 1
        finally:
            if finished < request.n:
                self.aborted += 1

    async def ensure_adapter(self, name: str, path: Path) -> None:
        self.adapters[name] = path

    async def health(self) -> EngineHealth:
        if self.ready:
            return EngineHealth(True, "ready", {"running": 0, "waiting": 0})
        return EngineHealth(False, "loading")

    async def close(self) -> None:
        self.closed = True
