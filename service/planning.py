"""From an authenticated request to what the engine runs: the request's plan.

Order: tenant and department (``Tenancy.route``) -> adapter from the registry
alias -> the department's L1 template rendered around the messages -> sampling
limits (the tenant's ``max_tokens`` cap). The plan also names, for the response
headers, which template version and adapter version served the request (with a
fallback, an earlier version than the file's). The system prompt is rendered on the
template store's threads, never on the event loop, and cached (``TemplateStore.resolve``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .config import Settings
from .domain import ChatMessage, GenerationRequest, SamplingParams, ToolCall
from .engines.base import Engine
from .errors import InvalidRequestError, ServingConfigError
from .metrics import UNKNOWN, RequestMetrics
from .prompts import Rendered, Template, TemplateError, TemplateRenderError, TemplateStore
from .protocol import ChatCompletionRequest, Message, SamplingFields
from .registry import Adapter, AdapterRejected, Registry
from .tenancy import Principal, Route, Tenancy
from .tool_calls import has_schemas, plan_output

log = logging.getLogger(__name__)

# Response headers: what served the request (the request's department header is settings.department_header).
SERVED_TEMPLATE_HEADER = "x-loragate-template"
SERVED_ADAPTER_HEADER = "x-loragate-adapter"
SERVED_DEPARTMENT_HEADER = "x-loragate-department"

# Logprob values (each token's, and each of its alternatives) one answer may hold. An answer is
# built and encoded on the event loop, at ~1-3 us a value (~30 bytes each in the body): this keeps
# one answer to about a second of it and ~30 MB. Chat on an 8k-context model with n=4 and 20
# alternatives stays within it; completions with many prompts, echo and n could ask for billions.
MAX_LOGPROB_VALUES = 1_000_000


def check_logprob_budget(tokens: int, top: int, param: str) -> None:
    """400 when ``tokens`` tokens with ``top`` alternatives each are more logprobs than one answer holds."""
    values = tokens * (top + 1)
    if values > MAX_LOGPROB_VALUES:
        raise InvalidRequestError(
            f"This request asks for up to {values} logprob values (tokens x (alternatives + 1), over all "
            f"choices); this server returns at most {MAX_LOGPROB_VALUES} in one answer. Ask for fewer "
            "choices, prompts, tokens or alternatives.",
            param=param,
        )


@dataclass(frozen=True)
class Plan:
    request: GenerationRequest
    route: Route
    template: Template | None
    adapter: Adapter | None
    forced_call: bool = False  # a named or required tool_choice: the output JSON becomes the call

    @property
    def hide_reasoning(self) -> bool:
        """A hidden-CoT template's filter; not on constrained output, which is the JSON and nothing else."""
        return self.template is not None and self.template.cot == "hidden" and self.request.constraint is None

    def headers(self) -> dict[str, str]:
        return {
            SERVED_DEPARTMENT_HEADER: self.route.department.name,
            SERVED_TEMPLATE_HEADER: self.template.ref if self.template else "none",
            SERVED_ADAPTER_HEADER: self.adapter.ref if self.adapter else "base",
        }


@dataclass
class Planner:
    settings: Settings
    engine: Engine
    tenancy: Tenancy
    templates: TemplateStore
    registry: Registry

    async def plan(
        self,
        body: ChatCompletionRequest,
        principal: Principal,
        department: str | None,
        request_id: str,
        metrics: RequestMetrics | None = None,
    ) -> Plan:
        route = self.tenancy.route(principal, department, body.model)
        if metrics is not None:  # labels from configuration, as soon as they are known
            metrics.routed(route.tenant.name, route.department.name, UNKNOWN if route.adapter else None)
        sampling = self._sampling(body, route)
        if has_schemas(body):  # checking JSON schemas is CPU work: not on the event loop
            output = await asyncio.to_thread(plan_output, body, self.settings.max_schema_bytes)
        else:
            output = plan_output(body, self.settings.max_schema_bytes)
        messages = chat_messages(body.messages)
        adapter = await self.adapter_for(route)
        if metrics is not None:
            metrics.routed(route.tenant.name, route.department.name, adapter.ref if adapter else None)
        rendered = await self._template(route)
        if rendered is not None:
            messages = rendered.messages(messages)
        request = GenerationRequest(
            request_id=request_id,
            messages=messages,
            sampling=sampling,
            n=body.n,
            adapter=adapter.ref if adapter else None,
            tools=output.tools,
            tool_choice=output.tool_choice,
            parallel_tool_calls=output.parallel_tool_calls,
            constraint=output.constraint,
        )
        template = rendered.template if rendered is not None else None  # the version that served
        return Plan(
            request=request, route=route, template=template, adapter=adapter, forced_call=output.forced
        )

    async def adapter_for(self, route: Route) -> Adapter | None:
        """The route's adapter from the registry, made servable on the engine (None: the base model)."""
        if route.adapter is None:
            return None
        try:
            adapter = await self.registry.resolve_async(route.adapter)
        except AdapterRejected as exc:
            log.error("adapter alias %s cannot be served: %s", route.adapter, exc.message)
            raise ServingConfigError(f"The adapter `{route.adapter}` is not available right now.") from None
        await self.engine.ensure_adapter(adapter.ref, adapter.path)
        return adapter

    async def _template(self, route: Route) -> Rendered | None:
        """The department's template, rendered off the event loop (cached; see service.prompts)."""
        name = route.department.template
        if name is None:
            return None
        variables = {
            **route.tenant.variables,
            **route.department.variables,
            "tenant": route.tenant.name,
            "department": route.department.name,
        }
        try:
            return await self.templates.resolve(name, variables)
        except TemplateRenderError as exc:
            log.error("template %s cannot serve department %s: %s", name, route.department.name, exc)
            raise ServingConfigError("This department's prompt template could not be rendered.") from None
        except TemplateError as exc:
            log.error("template %s cannot be loaded: %s", name, exc)
            raise ServingConfigError("This department's prompt template is not available.") from None

    def max_tokens(self, route: Route, requested: int | None) -> int:
        """The tenant's cap lowers a larger (or the default) limit; the answer then ends with "length"."""
        max_tokens = requested or self.settings.default_max_tokens
        if route.tenant.max_tokens is not None:
            max_tokens = min(max_tokens, route.tenant.max_tokens)
        return max_tokens

    def _sampling(self, body: ChatCompletionRequest, route: Route) -> SamplingParams:
        if body.n > self.settings.max_n:
            raise InvalidRequestError(f"n must be at most {self.settings.max_n}.", param="n")
        if body.max_tokens and body.max_completion_tokens and body.max_tokens != body.max_completion_tokens:
            raise InvalidRequestError(
                "max_tokens and max_completion_tokens disagree; send one of them.", param="max_tokens"
            )
        max_tokens = self.max_tokens(route, body.max_completion_tokens or body.max_tokens)
        if body.min_tokens > max_tokens:
            raise InvalidRequestError("min_tokens must not exceed max_tokens.", param="min_tokens")
        top = (body.top_logprobs or 0) if body.logprobs else 0
        if body.logprobs:
            check_logprob_budget(body.n * max_tokens, top, "top_logprobs" if top else "logprobs")
        return sampling_params(body, max_tokens, logprobs=bool(body.logprobs), top_logprobs=top)


def chat_messages(messages: list[Message]) -> list[ChatMessage]:
    """The wire messages as the engines take them; a tool message must answer a call made before it."""
    calls: set[str] = set()
    out = []
    for i, m in enumerate(messages):
        tool_calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ())
        calls.update(call.id for call in tool_calls)
        if m.role == "tool" and m.tool_call_id not in calls:
            raise InvalidRequestError(
                "A message with role 'tool' must answer a tool call of an earlier assistant message"
                " (its tool_call_id).",
                param=f"messages.{i}.tool_call_id",
            )
        role = "system" if m.role == "developer" else m.role
        out.append(
            ChatMessage(role, m.text(), tool_calls, m.tool_call_id, m.name if m.role == "tool" else None)
        )
    return out


def sampling_params(
    body: SamplingFields,
    max_tokens: int,
    *,
    logprobs: bool = False,
    top_logprobs: int = 0,
    prompt_logprobs: bool = False,
) -> SamplingParams:
    """The request's sampling fields as the engines take them (absent fields: their neutral values).

    Chat and completions share the fields; their logprobs differ on the wire (a flag and a count,
    or one count), so the caller says what was asked.
    """
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
        logit_bias=tuple((int(k), v) for k, v in (body.logit_bias or {}).items()),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        prompt_logprobs=prompt_logprobs,
    )
