"""Serving ``/v1/completions``: prompts -> one generation request each -> ``text_completion`` JSON or SSE.

The legacy completions API that evaluation harnesses use. A prompt goes to the engine as it is
(``GenerationRequest.prompt``): no chat template, and no L1 template either, since templates
are chat messages. Tenancy, the department header, adapters and the tenant's caps are chat's
(``Planner``). Each prompt of a list is its own request, run at the same time as the others;
its ``n`` choices are indexed ``prompt_index * n + i``, as OpenAI does.

``echo`` puts the prompt before each choice's text; with ``logprobs`` the prompt's tokens then
come first in the choice's logprobs (the engine computes them: ``SamplingParams.prompt_logprobs``),
the first with a null logprob, as OpenAI and vLLM answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring_ascii as quote
from typing import Any

from .domain import Delta, GenerationRequest, SamplingParams, TokenLogprob
from .engines.base import Engine
from .errors import EngineFailure, InvalidRequestError, LoragateError
from .metrics import UNKNOWN, Metrics, RequestMetrics
from .planning import Plan, Planner
from .protocol_completions import MAX_PROMPTS, CompletionRequest, new_text_completion_id
from .sse import DONE, event
from .tenancy import Principal

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) for this API, whatever chat's default is
LOGPROB_FLOOR = -9999.0  # what OpenAI sends for -inf; JSON has no infinity


def unsupported(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code="unsupported_parameter")


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
class CompletionService:
    engine: Engine
    planner: Planner
    telemetry: Metrics  # for the prompt tokens of a request's second and later prompts

    async def plan(
        self,
        body: CompletionRequest,
        principal: Principal,
        department: str | None,
        request_id: str,
        metrics: RequestMetrics | None = None,
    ) -> CompletionPlan:
        prompts = prompts_of(body)
        planner = self.planner
        route = planner.tenancy.route(principal, department, body.model)
        if metrics is not None:
            metrics.routed(route.tenant.name, route.department.name, UNKNOWN if route.adapter else None)
        sampling = self._sampling(body, planner.max_tokens(route, body.max_tokens or DEFAULT_MAX_TOKENS))
        adapter = await planner.adapter_for(route)
        if metrics is not None:
            metrics.routed(route.tenant.name, route.department.name, adapter.ref if adapter else None)
        plans = [
            Plan(
                request=GenerationRequest(
                    request_id=request_id if len(prompts) == 1 else f"{request_id}-{index}",
                    messages=(),
                    sampling=sampling,
                    n=body.n,
                    adapter=adapter.ref if adapter else None,
                    prompt=prompt,
                ),
                route=route,
                template=None,
                adapter=adapter,
            )
            for index, prompt in enumerate(prompts)
        ]
        return CompletionPlan(body, prompts, plans)

    def _sampling(self, body: CompletionRequest, max_tokens: int) -> SamplingParams:
        if body.n > self.planner.settings.max_n:
            raise InvalidRequestError(f"n must be at most {self.planner.settings.max_n}.", param="n")
        if body.min_tokens > max_tokens:
            raise InvalidRequestError("min_tokens must not exceed max_tokens.", param="min_tokens")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=max(body.top_k or 0, 0),
            min_p=body.min_p or 0.0,
            repetition_penalty=body.repetition_penalty or 1.0,
            min_tokens=body.min_tokens,
            ignore_eos=body.ignore_eos,
            seed=body.seed,
            stop=tuple(body.stop),
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            logit_bias=logit_bias_of(body),
            logprobs=body.logprobs is not None,
            top_logprobs=body.logprobs or 0,
            prompt_logprobs=body.echo and body.logprobs is not None,
        )

    # -- generating ---------------------------------------------------------------------------
    def _deltas(self, plan: CompletionPlan) -> AsyncGenerator[tuple[int, Delta], None]:
        return merged([self.engine.stream(p.request) for p in plan.plans])

    async def complete(self, plan: CompletionPlan, metrics: RequestMetrics) -> dict[str, Any]:
        """The ``text_completion`` object, as JSON."""
        n, meter, tally = plan.body.n, Meter(metrics, self.telemetry, plan.body.n), Tally()
        choices = [ChoiceText(plan, index) for index in range(plan.choices)]
        prompt_logprobs: dict[int, list[TokenLogprob | None]] = {}
        async with aclosing(self._deltas(plan)) as deltas:
            async for p, delta in deltas:
                meter(p, delta)
                choice = choices[p * n + delta.index]
                choice.parts.append(delta.text)
                if delta.logprobs:
                    choice.tokens.extend(delta.logprobs)
                if delta.prompt_logprobs is not None:
                    prompt_logprobs.setdefault(p, delta.prompt_logprobs)
                if delta.finish_reason is not None:
                    choice.finish(delta)
                    tally.finish(p, delta)
        out = []
        for choice in choices:
            entry: dict[str, Any] = {"index": choice.index, "text": choice.text(), "logprobs": None}
            if plan.body.logprobs is not None:
                entry["logprobs"] = choice.logprobs(prompt_logprobs.get(choice.prompt_index)).json()
            entry["finish_reason"] = choice.finish_reason
            out.append(entry)
        return {
            "id": new_text_completion_id(),
            "object": "text_completion",
            "created": int(time.time()),
            "model": plan.body.model,
            "choices": out,
            "usage": tally.usage(),
        }

    async def open_stream(self, plan: CompletionPlan, metrics: RequestMetrics) -> AsyncGenerator[str, None]:
        """Start every prompt; errors until each has its first delta raise here (a real HTTP error)."""
        deltas = self._deltas(plan)
        meter = Meter(metrics, self.telemetry, plan.body.n)
        first: list[tuple[int, Delta]] = []
        waiting = set(range(len(plan.prompts)))
        try:
            while waiting:
                item = await anext(deltas, None)
                if item is None:
                    break
                meter(*item)
                first.append(item)
                waiting.discard(item[0])
        except BaseException:
            await deltas.aclose()
            raise
        return self._sse(plan, first, deltas, meter)

    async def _sse(
        self,
        plan: CompletionPlan,
        first: list[tuple[int, Delta]],
        deltas: AsyncGenerator[tuple[int, Delta], None],
        meter: Meter,
    ) -> AsyncGenerator[str, None]:
        events = StreamEvents(plan)
        out = ""
        try:
            async with aclosing(deltas):  # closing it aborts the engine's work
                pending: tuple[int, Delta] | None = first.pop(0) if first else None
                while pending is not None:
                    out += events.feed(*pending)
                    if out and events.tally.finished < plan.choices:  # the last one waits for the end
                        yield out
                        out = ""
                    if first:
                        pending = first.pop(0)
                    else:
                        pending = await anext(deltas, None)
                        if pending is not None:
                            meter(*pending)
            out += events.end()
        except LoragateError as exc:
            meter.metrics.fail(exc.error_type)
            out += event(exc.envelope())
        except Exception:
            log.exception("completions stream failed")
            failure = LoragateError("The server failed while streaming this response.")
            meter.metrics.fail(failure.error_type)
            out += event(failure.envelope())
        yield out + DONE


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
def prompts_of(body: CompletionRequest) -> list[str]:
    """The prompts as text, after the checks OpenAI's schema cannot express."""
    if body.suffix:
        raise unsupported("suffix", "suffix is not supported: the served models do not fill in the middle.")
    if body.best_of is not None and body.best_of not in (1, body.n):
        raise unsupported("best_of", "best_of is only supported when it equals n (or is 1).")
    prompt = body.prompt
    prompts = [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)]
    if not isinstance(prompt, str) and len(prompts) != len(prompt):
        raise unsupported(
            "prompt",
            "Token-id prompts are not supported: send the prompt as text (a string or a list of strings).",
        )
    if not prompts:
        raise InvalidRequestError("prompt must not be an empty list.", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise InvalidRequestError(f"prompt may hold at most {MAX_PROMPTS} prompts.", param="prompt")
    if not all(prompts):
        raise InvalidRequestError("A prompt must not be empty.", param="prompt")
    return prompts


def logit_bias_of(body: CompletionRequest) -> tuple[tuple[int, float], ...]:
    if not body.logit_bias:
        return ()
    try:
        bias = tuple((int(token), value) for token, value in body.logit_bias.items())
    except ValueError:
        raise InvalidRequestError(
            "logit_bias keys must be token ids (integers as strings).", param="logit_bias"
        ) from None
    if any(token < 0 for token, _ in bias):
        raise InvalidRequestError(
            "logit_bias keys must be token ids (integers as strings).", param="logit_bias"
        )
    return bias


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
                self.metrics.series(self.telemetry.prompt_tokens).inc(delta.prompt_tokens)
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
