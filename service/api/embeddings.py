"""POST /v1/embeddings: parse (the pipeline), then the embeddings service (``service/embeddings/``)."""

from __future__ import annotations

from ..accounting import admit, estimate, keep_text
from ..protocol_completions import EmbeddingList, EmbeddingRequest
from .pipeline import Answer, ApiRoute, Call

EMBEDDINGS_PATH = "/v1/embeddings"


async def create_embedding(call: Call, body: EmbeddingRequest) -> Answer:
    state, metrics = call.state, call.metrics
    assert metrics is not None  # a generating route: measured
    department = call.headers.get(state.settings.department_header)
    route = state.embeddings.route(call.principal, department, metrics)
    keep_text(metrics, route.tenant, body.input)
    limits = await admit(call, route, estimate(len(str(body.input)), 0, 1))  # str(): any of input's forms
    return Answer(json=await state.embeddings.create(body, metrics), headers=limits)


ROUTE = ApiRoute(
    "POST",
    EMBEDDINGS_PATH,
    create_embedding,
    request=EmbeddingRequest,
    response=EmbeddingList,
    usage="embeddings",
    summary="Create Embeddings",
    tag="embeddings",
)
