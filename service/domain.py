"""What a request becomes on its way to an engine, and what comes back: the gateway's domain types.

The planner turns an OpenAI request into a :class:`GenerationRequest` (messages after the L1
template, :class:`SamplingParams`, the adapter); an engine answers with :class:`Delta` events.
They live here, not in the engine package, so that templates and planning need no engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]

# Temperatures below this decode greedily (vLLM's _SAMPLING_EPS): dividing logits by a subnormal
# temperature would overflow them to inf, and the draw would fail.
SAMPLING_EPS = 1e-5


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Decoding settings for one request; a temperature below ``SAMPLING_EPS`` means greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: str
    messages: Sequence[ChatMessage]
    sampling: SamplingParams
    n: int = 1
    adapter: str | None = None  # a name given to ensure_adapter first; None: the base model


@dataclass(slots=True)
class Delta:
    """New text for one choice. The last delta of a choice has ``finish_reason``."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0  # set on the finishing delta
    completion_tokens: int = 0  # set on the finishing delta
    queue_seconds: float | None = None  # on a choice's first delta: the wait for the batch, if known
