"""POST /v1/chat/completions: parse (the pipeline), plan, generate, answer as JSON or SSE.

The route stays thin: the plan comes from the planner (tenancy, adapter, L1 template, caps) and
the answer from the chat service (``service/serving.py``).
"""

from __future__ import annotations

from ..accounting import admit, estimate, served
from ..protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from .pipeline import Answer, ApiRoute, Call

CHAT_PATH = "/v1/chat/completions"


async def create_chat_completion(call: Call, body: ChatCompletionRequest) -> Answer:
    state, metrics = call.state, call.metrics
    assert metrics is not None  # a generating route: measured
    department = call.headers.get(state.settings.department_header)
    plan = await state.chat.planner.plan(body, call.principal, department, call.request_id, metrics)
    served(metrics, plan)
    request = plan.request
    chars = sum(len(m.content) for m in request.messages) + len(str(request.tools) if request.tools else "")
    headers = plan.headers() | await admit(
        call, plan.route, estimate(chars, request.sampling.max_tokens, request.n)
    )
    if body.stream:
        return Answer(events=await state.chat.open_stream(plan, body, metrics), headers=headers)
    return Answer(json=await state.chat.complete(plan, body, metrics), headers=headers)


ROUTE = ApiRoute(
    "POST",
    CHAT_PATH,
    create_chat_completion,
    request=ChatCompletionRequest,
    response=ChatCompletion,
    stream=ChatCompletionChunk,
    usage="chat",
    summary="Create Chat Completion",
    tag="chat",
)
