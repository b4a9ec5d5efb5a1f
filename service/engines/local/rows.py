"""One choice of one request as a row of the running batch: what it has produced and what it sends.

A row follows its tokens (penalty counts, grammar state, text, logprobs) and sends its
deltas. Everything here is per row: the scheduler calls it inside its per-row guards, so a
failure here fails that row's request alone.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...domain import Delta, FinishReason, GenerationRequest, SamplingParams, TokenLogprob
from .grammar import Grammar, RowGrammar
from .sampling import LogitBias
from .text import TextStream


@dataclass(eq=False)
class Job:
    """One request as the worker sees it; results go into ``queue`` on ``loop``."""

    request: GenerationRequest
    prompt_ids: list[int]
    loop: asyncio.AbstractEventLoop
    adapter_path: Path | None = None  # where request.adapter's weights are (from the registry)
    grammar: Grammar | None = None  # request.constraint, compiled
    queue: asyncio.Queue[Delta | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    submitted: float = field(default_factory=time.monotonic)
    queue_seconds: float | None = None  # submission -> taken into the batch; set when taken
    prompt_logprobs: list[TokenLogprob | None] | None = None  # set by the prefill when asked

    @property
    def group(self) -> str:
        """The client request this job is part of: a completions request of several prompts runs
        one job per prompt, with ids ``<request id>-<prompt index>`` (CompletionService.plan)."""
        head, _, tail = self.request.request_id.rpartition("-")
        return head if head and tail.isdigit() else self.request.request_id

    def send(self, item: Delta | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the requester's event loop is closed: nobody listens any more
            self.cancelled = True


@dataclass
class _Pending:
    entry: TokenLogprob
    end: int | None = None  # where the token's text ends in the row's text, once decoded


class LogprobTrail:
    """Logprob entries of tokens whose text has not gone out yet; each leaves with its text."""

    def __init__(self) -> None:
        self._pending: list[_Pending] = []
        self._released_end = 0  # where the text of the entries released so far ends
        self.picked: TokenLogprob | None = None  # the last pick's entry, until the token is accepted

    def add(self) -> None:
        """Record the accepted token's entry (before the token goes into the text)."""
        if self.picked is not None:
            self._pending.append(_Pending(self.picked))
            self.picked = None

    def settle(self, text: TextStream) -> None:
        """After ``text.add``: the tokens whose text is now decoded end where the text ends."""
        if text.caught_up:
            for item in self._pending:
                if item.end is None:
                    item.end = len(text.text)

    def release(self, emitted: int) -> list[TokenLogprob]:
        """The entries of tokens whose text is all out."""
        count = 0
        for item in self._pending:
            if item.end is None or item.end > emitted:
                break
            count += 1
        out, self._pending = self._pending[:count], self._pending[count:]
        if out:
            self._released_end = out[-1].end or self._released_end
        return [item.entry for item in out]

    def rest(self) -> list[TokenLogprob]:
        out, self._pending = self._pending, []
        return [item.entry for item in out]

    def before(self, cut: int) -> list[TokenLogprob]:
        """A stop string cut the text at ``cut``: the entries of the tokens whose text begins before
        it. Tokens wholly inside the cut text (the stop string, and what followed it) have none,
        as their text is not in the answer.

        Tokens that decode together (the bytes of one character) end where their text ends, so a
        group of tokens with the same end begins where the group before it ended. The tokens the
        last ``add`` decoded (the one that met the stop string) are not settled: they begin where
        the last settled token ends.
        """
        kept: list[TokenLogprob] = []
        start = last_end = self._released_end
        for item in self._pending:
            if item.end is None:
                start = last_end
            elif item.end != last_end:
                start, last_end = last_end, item.end
            if start >= cut:
                break
            kept.append(item.entry)
        self._pending = []
        return kept


@dataclass(eq=False)
class Row:
    """One choice of one job: a row of the running batch."""

    job: Job
    index: int
    params: SamplingParams
    text: TextStream
    generator: torch.Generator | None
    seen: torch.Tensor  # prompt and output ids, for the repetition penalty
    generated: int = 0
    finished: bool = False
    queue_seconds: float | None = None  # goes out on the row's first delta, then None
    grammar: RowGrammar | None = None
    counts: torch.Tensor | None = None  # output token counts, for the presence/frequency penalties
    bias: LogitBias | None = None
    trail: LogprobTrail | None = None  # sampling.logprobs
    prompt_logprobs: bool = False  # still to send on the first delta
    special: bool = False  # picks always go through the row's own path (grammar, logprobs)

    def accept(self, token: int, eos: set[int]) -> None:
        """Follow one token; send what it releases, or the finish."""
        self._follow(token)
        params = self.params
        if token in eos and not params.ignore_eos:
            self._finish(self.text.flush(), "stop")
            return
        text = self.text.add(token, check_stops=self.generated >= params.min_tokens)
        if self.trail is not None and not self.text.stopped:  # the cut text would misplace the ends
            self.trail.settle(self.text)
        if self.text.stopped:  # a stop string: the tokens of the text it cut have no entries
            self._finish(text, "stop", cut=len(self.text.text))
        elif self.grammar is not None and self.grammar.done:  # the JSON is complete
            self._finish(text + self.text.flush(), "stop")
        elif self.generated >= params.max_tokens:
            self._finish(text + self.text.flush(), "length")
        elif text:
            logprobs = self.trail.release(self.text.emitted) if self.trail is not None else None
            self.job.send(self._delta(text, logprobs))

    def _follow(self, token: int) -> None:
        """The token counts for the penalties, the grammar and the logprobs."""
        self.generated += 1
        if self.params.repetition_penalty != 1.0:
            self.seen = torch.cat([self.seen, self.seen.new_tensor([token])])
        if self.counts is not None:
            self.counts[token] += 1
        if self.grammar is not None:
            self.grammar.accept(token)
        if self.trail is not None:
            self.trail.add()

    def _finish(self, text: str, reason: FinishReason, cut: int | None = None) -> None:
        self.finished = True
        entries = None
        if self.trail is not None:
            entries = self.trail.rest() if cut is None else self.trail.before(cut)
        delta = self._delta(text, entries)
        delta.finish_reason = reason
        delta.prompt_tokens, delta.completion_tokens = len(self.job.prompt_ids), self.generated
        self.job.send(delta)

    def _delta(self, text: str, logprobs: list[TokenLogprob] | None) -> Delta:
        """A delta of this row; the row's first also carries its queue time and prompt logprobs."""
        delta = Delta(index=self.index, text=text, queue_seconds=self.queue_seconds, logprobs=logprobs)
        self.queue_seconds = None
        if self.prompt_logprobs:
            delta.prompt_logprobs, self.prompt_logprobs = self.job.prompt_logprobs, False
        return delta
