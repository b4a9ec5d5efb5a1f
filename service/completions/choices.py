"""A completion's choices: text, echo and OpenAI's completions-format logprobs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..domain import Delta, TokenLogprob
from ..errors import EngineFailure
from ..planning import Plan
from ..protocol_completions import CompletionRequest

log = logging.getLogger(__name__)

LOGPROB_FLOOR = -9999.0  # what OpenAI sends for -inf; JSON has no infinity


@dataclass(frozen=True)
class CompletionPlan:
    """What serves one completions request: a plan per prompt, all on the same route and adapter."""

    body: CompletionRequest
    prompts: list[str]
    plans: list[Plan]

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.body.n

    def headers(self) -> dict[str, str]:
        return self.plans[0].headers()


@dataclass
class Tally:
    """The usage: each prompt's tokens once (every finishing delta carries them), each choice's own."""

    prompted: set[int] = field(default_factory=set)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finished: int = 0  # choices

    def finish(self, p: int, delta: Delta) -> None:
        if p not in self.prompted:
            self.prompted.add(p)
            self.prompt_tokens += delta.prompt_tokens
        self.completion_tokens += delta.completion_tokens
        self.finished += 1

    def usage(self) -> dict[str, int]:
        return usage(self.prompt_tokens, self.completion_tokens)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# -- a choice as it grows -----------------------------------------------------------------------------
@dataclass(eq=False)
class ChoiceText:
    plan: CompletionPlan
    index: int
    parts: list[str] = field(default_factory=list)
    tokens: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    offset: int = 0  # streaming: where the next token starts in the text sent so far
    seen_logprobs: bool = False

    @property
    def prompt_index(self) -> int:
        return self.index // self.plan.body.n

    @property
    def prompt(self) -> str:
        return self.plan.prompts[self.prompt_index]

    def text(self) -> str:
        generated = "".join(self.parts)
        return self.prompt + generated if self.plan.body.echo else generated

    def finish(self, delta: Delta) -> None:
        self.finish_reason = delta.finish_reason
        self.completion_tokens = delta.completion_tokens
        if (
            self.plan.body.logprobs is not None
            and delta.completion_tokens
            and not (self.tokens or self.seen_logprobs)
        ):
            log.error("the engine returned no logprobs for request %s", self.plan.plans[0].request.request_id)
            raise EngineFailure("The engine did not return the logprobs this request asked for.")

    def logprobs(self, prompt: Sequence[TokenLogprob | None] | None) -> Logprobs:
        """Non-streaming: the whole choice's logprobs, the prompt's first with ``echo``."""
        out = Logprobs()
        if self.plan.body.echo:
            out.add_prompt(self.prompt, self._prompt_entries(prompt))
        out.add_sampled(self.tokens, self.plan.body.logprobs or 0)
        return out

    def prompt_fragment(self, prompt: Sequence[TokenLogprob | None] | None) -> dict[str, Any]:
        """Streaming with ``echo``: the prompt's logprobs, in the chunk that carries the prompt."""
        out = Logprobs()
        out.add_prompt(self.prompt, self._prompt_entries(prompt))
        self.offset = out.offset
        return out.json()

    def fragment(self, entries: Sequence[TokenLogprob] | None) -> dict[str, Any]:
        """Streaming: one delta's tokens, their offsets following the text sent before them."""
        out = Logprobs(self.offset)
        if entries:
            self.seen_logprobs = True
            out.add_sampled(entries, self.plan.body.logprobs or 0)
        self.offset = out.offset
        return out.json()

    def _prompt_entries(self, prompt: Sequence[TokenLogprob | None] | None) -> Sequence[TokenLogprob | None]:
        if prompt is None:
            log.error(
                "the engine returned no prompt logprobs for request %s", self.plan.plans[0].request.request_id
            )
            raise EngineFailure(
                "The engine did not return the prompt's logprobs that echo with logprobs asks for."
            )
        return prompt


class Logprobs:
    """OpenAI's completions logprobs (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``)."""

    __slots__ = ("offset", "text_offset", "token_logprobs", "tokens", "top_logprobs")

    def __init__(self, offset: int = 0):
        self.offset = offset
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def _add(self, token: str, logprob: float | None, top: dict[str, float] | None) -> None:
        self.tokens.append(token)
        self.token_logprobs.append(logprob)
        self.top_logprobs.append(top)
        self.text_offset.append(self.offset)
        self.offset += len(token)

    def add_sampled(self, entries: Sequence[TokenLogprob], k: int) -> None:
        for entry in entries:
            self._add(entry.token, _finite(entry.logprob), _top(entry, k))

    def add_prompt(self, prompt: str, entries: Sequence[TokenLogprob | None]) -> None:
        """The prompt's tokens; the first has no logprob (the engine sends None), so its text is
        what the others leave of the prompt (empty for a BOS token that is not in the text)."""
        start = self.offset
        rest = "".join(e.token for e in entries if e is not None)
        for position, entry in enumerate(entries):
            if entry is None:
                head = prompt[: len(prompt) - len(rest)] if position == 0 and prompt.endswith(rest) else ""
                self._add(head, None, None)
            else:
                self._add(entry.token, _finite(entry.logprob), _top(entry, len(entry.top)))
        self.offset = start + len(
            prompt
        )  # the completion's tokens start after the prompt, whatever the tokens say

    def json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }


def _finite(logprob: float) -> float:
    return logprob if logprob > LOGPROB_FLOOR else LOGPROB_FLOOR  # -inf and NaN too


def _top(entry: TokenLogprob, k: int) -> dict[str, float]:
    """The ``k`` most likely tokens and the chosen one (OpenAI: "up to logprobs+1 elements")."""
    top = {alt.token: _finite(alt.logprob) for alt in entry.top[:k]}
    top.setdefault(entry.token, _finite(entry.logprob))
    return top


# -- several prompts, one stream ------------------------------------------------------------------------
