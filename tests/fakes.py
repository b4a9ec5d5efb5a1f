"""One typed fake engine, for the gateway paths the real model cannot produce on demand.

Use it through the app factory: ``create_app(settings, engine_factory=lambda s: fake)``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from service.domain import Delta, FinishReason, GenerationRequest, TokenLogprob, TopLogprob
from service.engines.base import EngineHealth
from service.errors import EngineUnavailableError


@dataclass
class FakeEngine:
    """Replays ``script`` for each of the ``n`` choices.

    - ``ready=False``: ``health()`` says not ready and ``stream`` raises 503, as the real engine does.
    - ``fail_at_start``: raised by ``stream`` before its first delta.
    - ``fail_mid_stream``: raised after the first delta of choice 0.
    - ``sampling.logprobs``: each scripted piece is one token of logprob ``FAKE_LOGPROB``, with
      ``top_logprobs`` alternatives ``alt0``, ``alt1``... (less likely); ``sampling.prompt_logprobs``
      (a raw ``prompt``): the first delta carries ``fake_prompt_logprobs(prompt)``.
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
                    yield Delta(
                        index,
                        text,
                        logprobs=fake_logprobs(request, text),
                        prompt_logprobs=fake_prompt_logprobs(request) if index == position == 0 else None,
                    )
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


FAKE_LOGPROB = -0.25  # every scripted token's
FAKE_PROMPT_LOGPROB = -1.5  # every prompt token's but the first (which has none)


def _alternatives(request: GenerationRequest) -> tuple[TopLogprob, ...]:
    return tuple(TopLogprob(f"alt{j}", -1.0 - j) for j in range(request.sampling.top_logprobs))


def fake_logprobs(request: GenerationRequest, text: str) -> list[TokenLogprob] | None:
    if not request.sampling.logprobs:
        return None
    return [TokenLogprob(text, FAKE_LOGPROB, top=_alternatives(request))]


def fake_prompt_logprobs(request: GenerationRequest) -> list[TokenLogprob | None] | None:
    """The prompt in whitespace-led pieces that join back to it; the first has no logprob, as engines send."""
    if not (request.sampling.prompt_logprobs and request.prompt):
        return None
    pieces = re.findall(r"\s*\S+|\s+$", request.prompt)
    return [None, *(TokenLogprob(p, FAKE_PROMPT_LOGPROB, top=_alternatives(request)) for p in pieces[1:])]
