"""Serving a chat completion: a request's plan (see planning.py) -> engine -> OpenAI response or SSE.

The work behind the route in ``api/chat.py``, which stays thin; the streaming and non-streaming
paths share one plan, and hidden chain-of-thought is filtered out of the engine's deltas for both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

from .admission import first_delta
from .choices import ChoiceBuilder, chunk_of
from .domain import Delta, TokenLogprob
from .engines.base import Engine
from .errors import EngineFailure, LoragateError
from .metrics import RequestMetrics
from .planning import Plan, Planner
from .protocol import ChatCompletionRequest, new_completion_id
from .reasoning import HiddenReasoning
from .sse import DONE, ChunkEvents, event
from .tool_calls import forced_calls

log = logging.getLogger(__name__)


@dataclass
class ChatService:
    engine: Engine
    planner: Planner

    def _deltas(self, plan: Plan) -> AsyncGenerator[Delta, None]:
        deltas = self.engine.stream(plan.request)
        if plan.hide_reasoning:
            deltas = _without_reasoning(deltas)
        return forced_calls(deltas) if plan.forced_call else deltas

    async def complete(
        self, plan: Plan, body: ChatCompletionRequest, metrics: RequestMetrics
    ) -> dict[str, Any]:
        """The ``chat.completion`` object, as JSON."""
        request = plan.request
        choices = [ChoiceBuilder(i, request.sampling.logprobs) for i in range(request.n)]
        prompt_tokens = completion_tokens = 0
        async with aclosing(self._deltas(plan)) as deltas:  # closing it aborts the engine's work
            delta = await first_delta(deltas, self.planner.settings.first_token_timeout)
            while delta is not None:
                metrics.delta(delta)
                choices[delta.index].add(delta)
                if delta.finish_reason is not None:
                    prompt_tokens = delta.prompt_tokens
                    completion_tokens += delta.completion_tokens
                delta = await anext(deltas, None)
        return {  # protocol.ChatCompletion's shape, as plain JSON (ChoiceBuilder.json says why)
            "id": new_completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": [choice.json() for choice in choices],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    async def open_stream(
        self, plan: Plan, body: ChatCompletionRequest, metrics: RequestMetrics
    ) -> AsyncGenerator[str, None]:
        """Start generating; errors up to the first token raise here (a real HTTP error), as does
        ``first_token_timeout`` (504)."""
        deltas = self._deltas(plan)
        try:
            first = await first_delta(deltas, self.planner.settings.first_token_timeout)
            if first is None:
                raise EngineFailure("The engine ended the answer before its first token.")
        except BaseException:
            await deltas.aclose()
            raise
        metrics.delta(first)
        return self._sse(body, plan.request.n, first, deltas, metrics, plan.request.sampling.logprobs)

    async def _sse(
        self,
        body: ChatCompletionRequest,
        n: int,
        first: Delta,
        deltas: AsyncGenerator[Delta, None],
        metrics: RequestMetrics,
        logprobs: bool,
    ) -> AsyncGenerator[str, None]:
        chunks = ChunkEvents(
            new_completion_id(), int(time.time()), body.model, usage_field=body.include_usage
        )
        prompt_tokens = completion_tokens = finished = 0
        # Events known together leave in one write (each is a syscall and a wake-up of the client):
        # the role chunks with the first text, a finish with its text, the last finish with the
        # usage and [DONE].
        out = "".join(chunks.choice(index, role="assistant", content="") for index in range(n))
        try:
            async with aclosing(deltas):  # closing it aborts the engine's work
                pending: Delta | None = first
                while pending is not None:
                    out += chunk_of(chunks, pending, logprobs)
                    if pending.finish_reason is not None:
                        prompt_tokens = pending.prompt_tokens
                        completion_tokens += pending.completion_tokens
                        finished += 1
                        out += chunks.choice(pending.index, finish_reason=pending.finish_reason)
                    if out and finished < n:  # after the last finish only the stream's end is left
                        yield out
                        out = ""
                    pending = await anext(deltas, None)
                    if pending is not None:
                        metrics.delta(pending)
            if body.include_usage:
                total = prompt_tokens + completion_tokens
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": total,
                }
                out += chunks.usage(usage)
        except LoragateError as exc:
            metrics.fail(exc.error_type)
            out += event(exc.envelope())
        except Exception:
            log.exception("stream failed")
            failure = LoragateError("The server failed while streaming this response.")
            metrics.fail(failure.error_type)
            out += event(failure.envelope())
        yield out + DONE


async def _without_reasoning(deltas: AsyncGenerator[Delta, None]) -> AsyncGenerator[Delta, None]:
    """Hidden chain of thought: each choice's text before the answer marker never leaves, nor do
    the logprob entries of its tokens (their ``token`` fields would spell the reasoning out).

    Entries of the held text are held with it: if the marker never comes, the text goes out at
    the finish (``HiddenReasoning``'s fallback) and so do they.
    """
    filters: dict[int, HiddenReasoning] = {}
    held: dict[int, list[TokenLogprob]] = {}  # entries of the text held before the marker
    async with aclosing(deltas):
        async for delta in deltas:
            hidden = filters.setdefault(delta.index, HiddenReasoning())
            answered = hidden.answered
            text = hidden.feed(delta.text)
            logprobs = delta.logprobs
            if logprobs is not None:
                if not hidden.answered:
                    held.setdefault(delta.index, []).extend(logprobs)
                    logprobs = []
                elif not answered:  # the marker ended in this delta: only the answer's tokens
                    held.pop(delta.index, None)
                    logprobs = _entries_of(logprobs, text)
                elif delta.text and not text:  # whitespace after the marker, dropped with its tokens
                    logprobs = []
            if delta.finish_reason is not None and not hidden.answered:
                text += hidden.finish()
                if logprobs is not None:
                    logprobs = held.pop(delta.index, [])
            yield replace(delta, text=text, logprobs=logprobs)


def _entries_of(entries: list[TokenLogprob], text: str) -> list[TokenLogprob]:
    """The last of ``entries`` whose tokens make up ``text``, the end of their text (by length)."""
    if not text:
        return []
    covered = 0
    for count, entry in enumerate(reversed(entries), start=1):
        covered += len(entry.token)
        if covered >= len(text):
            return entries[-count:]
    return entries
