"""POST /v1/embeddings: parse (the pipeline), then the embeddings service (``service/embeddings/``)."""

from __future__ import annotations

from ..protocol_completions import EmbeddingList, EmbeddingRequest
from .pipeline import Answer, ApiRoute, Call

EMBEDDINGS_PATH = "/v1/embeddings"


async def create_embedding(call: Call, body: EmbeddingRequest) -> Answer:
    state, metrics = call.state, call.metrics
    assert metrics is not None  # the route is measured
    department = call.headers.get(state.settings.department_header)
    return Answer(json=await state.embeddings.create(body, call.principal, department, metrics))


ROUTE = ApiRoute(
    "POST",
    EMBEDDINGS_PATH,
    create_embedding,
    request=EmbeddingRequest,
    response=EmbeddingList,
    measured=True,
    summary="Create Embeddings",
    tag="embeddings",
)
