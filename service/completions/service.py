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

import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from ..admission import first_delta
from ..domain import Delta, GenerationRequest, SamplingParams, TokenLogprob
from ..engines.base import Engine
from ..errors import InvalidRequestError, LoragateError
from ..metrics import UNKNOWN, Metrics, RequestMetrics
from ..planning import Plan, Planner, check_logprob_budget, sampling_params
from ..protocol_completions import MAX_PROMPTS, CompletionRequest, new_text_completion_id
from ..sse import DONE, event
from ..tenancy import Principal
from .choices import ChoiceText, CompletionPlan, Tally
from .streams import Meter, StreamEvents, merged

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) for this API, whatever chat's default is


def unsupported(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code="unsupported_parameter")


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
        if body.logprobs is not None:
            check_logprob_budget(
                logprob_tokens(body, prompts, sampling.max_tokens), body.logprobs, "logprobs"
            )
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
        asked = body.logprobs is not None
        return sampling_params(
            body,
            max_tokens,
            logprobs=asked,
            top_logprobs=body.logprobs or 0,
            prompt_logprobs=body.echo and asked,
        )

    # -- generating ---------------------------------------------------------------------------
    def _deltas(self, plan: CompletionPlan) -> AsyncGenerator[tuple[int, Delta], None]:
        return merged([self.engine.stream(p.request) for p in plan.plans])

    async def complete(self, plan: CompletionPlan, metrics: RequestMetrics) -> dict[str, Any]:
        """The ``text_completion`` object, as JSON."""
        n, meter, tally = plan.body.n, Meter(metrics, self.telemetry, plan.body.n), Tally()
        choices = [ChoiceText(plan, index) for index in range(plan.choices)]
        prompt_logprobs: dict[int, list[TokenLogprob | None]] = {}
        async with aclosing(self._deltas(plan)) as deltas:  # closing it aborts the engine's work
            item = await first_delta(deltas, self.planner.settings.first_token_timeout)
            while item is not None:
                p, delta = item
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
                item = await anext(deltas, None)
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
        """Start every prompt; errors until each has its first delta raise here (a real HTTP error), as
        does ``first_token_timeout`` for the answer's first delta (504)."""
        deltas = self._deltas(plan)
        meter = Meter(metrics, self.telemetry, plan.body.n)
        first: list[tuple[int, Delta]] = []
        waiting = set(range(len(plan.prompts)))
        timeout = self.planner.settings.first_token_timeout
        try:
            while waiting:
                item = await (anext(deltas, None) if first else first_delta(deltas, timeout))
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


def logprob_tokens(body: CompletionRequest, prompts: list[str], max_tokens: int) -> int:
    """The most tokens with logprobs the answer can hold: each choice's completion, and with ``echo``
    its prompt again (a prompt has at most one token per UTF-8 byte, plus a special token or two)."""
    echoed = sum(len(prompt.encode()) + 2 for prompt in prompts) if body.echo else 0
    return body.n * (len(prompts) * max_tokens + echoed)


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
