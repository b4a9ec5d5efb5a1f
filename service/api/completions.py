"""POST /v1/completions: parse (the pipeline), plan, generate, answer as JSON or SSE.

The legacy completions API; the work is in ``service/completions.py``.
"""

from __future__ import annotations

from ..accounting import admit, estimate, served
from ..protocol_completions import Completion, CompletionChunk, CompletionRequest
from .pipeline import Answer, ApiRoute, Call

COMPLETIONS_PATH = "/v1/completions"


async def create_completion(call: Call, body: CompletionRequest) -> Answer:
    state, metrics = call.state, call.metrics
    assert metrics is not None  # a generating route: measured
    department = call.headers.get(state.settings.department_header)
    plan = await state.completions.plan(body, call.principal, department, call.request_id, metrics)
    first = plan.plans[0]
    served(metrics, first, plan.prompts)
    tokens = estimate(sum(len(p) for p in plan.prompts), first.request.sampling.max_tokens, plan.choices)
    headers = plan.headers() | await admit(call, first.route, tokens)
    if body.stream:
        return Answer(events=await state.completions.open_stream(plan, metrics), headers=headers)
    return Answer(json=await state.completions.complete(plan, metrics), headers=headers)


ROUTE = ApiRoute(
    "POST",
    COMPLETIONS_PATH,
    create_completion,
    request=CompletionRequest,
    response=Completion,
    stream=CompletionChunk,
    usage="completions",
    summary="Create Completion",
    tag="completions",
)
