"""A completion's events: prompts run together, their deltas merged, as ``text_completion`` SSE."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring_ascii as quote
from typing import Any

from ..domain import Delta
from ..errors import InvalidRequestError
from ..metrics import Metrics, RequestMetrics
from ..protocol_completions import new_text_completion_id
from .choices import ChoiceText, CompletionPlan, Tally

log = logging.getLogger(__name__)


class StreamEvents:
    """A stream's ``text_completion`` events, delta by delta."""

    def __init__(self, plan: CompletionPlan):
        body = plan.body
        self.plan, self.tally = plan, Tally()
        self.chunks = CompletionChunks(
            new_text_completion_id(), int(time.time()), body.model, body.include_usage
        )
        self.choices = [ChoiceText(plan, index) for index in range(plan.choices)]
        self.started: set[int] = set()  # prompts whose choices are open (echoed, where asked)

    def feed(self, p: int, delta: Delta) -> str:
        out = "" if p in self.started else self._opening(p, delta)
        choice = self.choices[p * self.plan.body.n + delta.index]
        logprobs = choice.fragment(delta.logprobs) if self.plan.body.logprobs is not None else None
        if logprobs is not None and not logprobs["tokens"]:
            logprobs = None  # a finish, or text held back before: no tokens of its own
        if delta.text or delta.finish_reason is not None or logprobs is not None:
            out += self.chunks.choice(choice.index, delta.text, delta.finish_reason, logprobs)
        if delta.finish_reason is not None:
            choice.finish(delta)
            self.tally.finish(p, delta)
        return out

    def end(self) -> str:
        return self.chunks.usage(self.tally.usage()) if self.plan.body.include_usage else ""

    def _opening(self, p: int, delta: Delta) -> str:
        """A prompt's first delta: with ``echo``, its choices start with the prompt (and its logprobs)."""
        self.started.add(p)
        body, out = self.plan.body, ""
        if body.echo:
            for i in range(body.n):
                choice = self.choices[p * body.n + i]
                logprobs = (
                    choice.prompt_fragment(delta.prompt_logprobs) if body.logprobs is not None else None
                )
                out += self.chunks.choice(choice.index, self.plan.prompts[p], None, logprobs)
        return out


# -- the request's fields -----------------------------------------------------------------------------
async def merged(streams: list[AsyncGenerator[Delta, None]]) -> AsyncGenerator[tuple[int, Delta], None]:
    """``(prompt index, delta)`` from every stream as they come; the first error raises, closing them all.

    One stream is relayed in this task (as chat is); several get a task each, cancelled (which
    closes their streams and so aborts the engine's work) when this generator is closed.
    """
    try:
        if len(streams) == 1:
            async with aclosing(streams[0]) as stream:
                async for delta in stream:
                    yield 0, delta
        else:
            async with aclosing(_interleaved(streams)) as interleaved:
                async for item in interleaved:
                    yield item
    except InvalidRequestError as exc:
        raise _about_the_prompt(exc) from None


async def _interleaved(streams: list[AsyncGenerator[Delta, None]]) -> AsyncGenerator[tuple[int, Delta], None]:
    queue: asyncio.Queue[tuple[int, Delta | Exception | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[Delta, None]) -> None:
        try:
            async with aclosing(stream):
                async for delta in stream:
                    queue.put_nowait((index, delta))
        except Exception as exc:
            queue.put_nowait((index, exc))
        else:
            queue.put_nowait((index, None))

    tasks = [asyncio.ensure_future(pump(index, stream)) for index, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            if item is None:
                running -= 1
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _about_the_prompt(exc: InvalidRequestError) -> InvalidRequestError:
    """Engines name ``messages`` in a too-long request's error; here the client sent ``prompt``."""
    if exc.param == "messages":
        exc.param = "prompt"
    return exc


@dataclass
class Meter:
    """Reports deltas to the request's metrics with the response's choice index, and counts each
    prompt's tokens once (``RequestMetrics`` counts the first finished choice's prompt; later
    prompts are added here)."""

    metrics: RequestMetrics
    telemetry: Metrics
    n: int
    counted: set[int] = field(default_factory=set)  # prompts whose tokens the metrics have

    def __call__(self, p: int, delta: Delta) -> None:
        if delta.finish_reason is not None and p not in self.counted:
            if self.counted:
                self.metrics.prompt(delta.prompt_tokens)
            self.counted.add(p)
        self.metrics.delta(replace(delta, index=p * self.n + delta.index) if p else delta)


class CompletionChunks:
    """The ``text_completion`` events of a stream; shared fields are encoded once (as ``ChunkEvents``)."""

    def __init__(self, completion_id: str, created: int, model: str, usage_field: bool):
        head = json.dumps({"id": completion_id, "object": "text_completion", "created": created})
        self._open = f'data: {head[:-1]}, "model": {quote(model)}, "choices": ['
        self._close = '], "usage": null}\n\n' if usage_field else "]}\n\n"

    def choice(
        self, index: int, text: str, finish_reason: str | None, logprobs: dict[str, Any] | None
    ) -> str:
        finish = "null" if finish_reason is None else quote(finish_reason)
        lp = "null" if logprobs is None else json.dumps(logprobs)
        body = (
            f'{{"index": {int(index)}, "text": {quote(text)}, "logprobs": {lp}, "finish_reason": {finish}}}'
        )
        return self._open + body + self._close

    def usage(self, counts: dict[str, int]) -> str:
        return f'{self._open}], "usage": {json.dumps(counts)}}}\n\n'
