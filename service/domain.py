"""What a request becomes on its way to an engine, and what comes back: the gateway's domain types.

The planner turns an OpenAI request into a :class:`GenerationRequest` (messages after the L1
template, :class:`SamplingParams`, the adapter); an engine answers with :class:`Delta` events.
They live here, not in the engine package, so that templates and planning need no engine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

FinishReason = Literal["stop", "length", "abort", "tool_calls"]

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
    # OpenAI's: penalties count the completion's tokens only (as vLLM and OpenAI do)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[
        tuple[int, float], ...
    ] = ()  # (token id, bias in [-100, 100]); ids checked by the engine
    logprobs: bool = False  # each sampled token's logprob on the deltas
    top_logprobs: int = 0  # with logprobs: this many alternatives per token (0 to 20)
    prompt_logprobs: bool = False  # /v1/completions echo + logprobs: the prompt's tokens too

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS


@dataclass(frozen=True, slots=True)
class Constraint:
    """What the output must be: any JSON object, or JSON that matches ``schema``."""

    kind: Literal["json_object", "json_schema"]
    schema: Mapping[str, Any] | None = None  # for json_schema

    @property
    def key(self) -> str:
        """One string per distinct grammar: what compiled grammars are cached under."""
        return self.kind + ":" + json.dumps(self.schema, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model made; ``arguments`` is JSON text, as OpenAI sends it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # system, user, assistant or tool
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's calls
    tool_call_id: str | None = None  # a tool message: the call it answers
    name: str | None = None  # a tool message: the function's name, when the client says it


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: str
    messages: Sequence[ChatMessage]
    sampling: SamplingParams
    n: int = 1
    adapter: str | None = None  # a name given to ensure_adapter first; None: the base model
    # OpenAI function tools ({"type": "function", "function": {name, description, parameters}}).
    # The engine shows them to the model, and with "auto" turns the model's calls into
    # Delta.tool_calls. A named or required choice never reaches an engine: the planner makes it
    # a ``constraint`` on the call's JSON, and the service wraps that JSON as the call.
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: Literal["none", "auto"] = "auto"
    parallel_tool_calls: bool = True
    constraint: Constraint | None = None
    prompt: str | None = None  # /v1/completions: this text as it is, no chat template (messages: empty)


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None  # the token's UTF-8 bytes


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One token of the output (or of the prompt) with its logprob and the ``top`` alternatives."""

    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None
    top: tuple[TopLogprob, ...] = ()


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of the ``index``-th call of a choice: its id and name come first, then ``arguments`` text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Delta:
    """New text for one choice. The last delta of a choice has ``finish_reason``."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0  # set on the finishing delta
    completion_tokens: int = 0  # set on the finishing delta
    queue_seconds: float | None = None  # on a choice's first delta: the wait for the batch, if known
    logprobs: list[TokenLogprob] | None = None  # sampling.logprobs: the tokens behind this delta
    tool_calls: list[ToolCallDelta] | None = None  # tool calls; their choice finishes with "tool_calls"
    prompt_logprobs: list[TokenLogprob | None] | None = None  # on the first delta; the first token's is None
