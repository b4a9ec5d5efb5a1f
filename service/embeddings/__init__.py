"""``/v1/embeddings``: relayed to an upstream server, or a local transformers model in this process.

``EmbeddingService`` checks the request and picks the backend that settings name
(``embeddings_upstream`` first, then ``local_embedding_model``); without either it answers 404
with how to configure one.
"""

from .service import (
    EMBEDDING_ADAPTER_LABEL,
    NOT_CONFIGURED,
    Embedder,
    EmbeddingService,
    embedder_from_settings,
)

__all__ = [
    "EMBEDDING_ADAPTER_LABEL",
    "NOT_CONFIGURED",
    "Embedder",
    "EmbeddingService",
    "embedder_from_settings",
]
