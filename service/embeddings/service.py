"""The embeddings route's work: the checks every backend shares, the backend, the usage metrics."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import Settings
from ..errors import InvalidRequestError, ModelNotFoundError, quoted
from ..metrics import Metrics, RequestMetrics
from ..protocol_completions import MAX_EMBEDDING_INPUTS, EmbeddingRequest
from ..tenancy import Principal, Route, Tenancy

log = logging.getLogger(__name__)

# The metrics' adapter label for embedding requests: never a registry ref (those have "@") nor "base".
EMBEDDING_ADAPTER_LABEL = "embedding"

NOT_CONFIGURED = (
    "This gateway serves no embedding model. Its operator can configure one: set "
    "LORAGATE_EMBEDDINGS_UPSTREAM (and LORAGATE_EMBEDDINGS_MODEL) to relay /v1/embeddings to an "
    "OpenAI-compatible server such as vLLM, or LORAGATE_LOCAL_EMBEDDING_MODEL to a transformers model "
    "folder that the gateway runs itself."
)


class Embedder(Protocol):
    """A backend: answers a checked request with OpenAI's embedding list, as JSON."""

    model_name: str | None  # what clients send; None: any name, the upstream decides

    async def start(self) -> None: ...

    async def embed(self, body: EmbeddingRequest, inputs: list[str]) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def embedder_from_settings(settings: Settings) -> Embedder | None:
    if settings.embeddings_upstream:
        from .relay import UpstreamEmbedder

        key = settings.embeddings_upstream_api_key
        return UpstreamEmbedder(
            settings.embeddings_upstream,
            model_name=settings.embeddings_model,
            api_key=key.get_secret_value() if key else None,
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
        )
    if settings.local_embedding_model is not None:
        from ..model_store import require_extra

        require_extra("local", "local_embedding_model")  # torch and transformers: not on the slim install
        from .local import LocalEmbedder

        path = settings.local_embedding_model
        return LocalEmbedder(path, model_name=settings.embeddings_model or path.name, device=settings.device)
    return None


@dataclass
class EmbeddingService:
    embedder: Embedder | None
    tenancy: Tenancy
    telemetry: Metrics

    @classmethod
    def from_settings(cls, settings: Settings, tenancy: Tenancy, telemetry: Metrics) -> EmbeddingService:
        return cls(embedder_from_settings(settings), tenancy, telemetry)

    @property
    def model_name(self) -> str | None:
        """The embedding model's name in /v1/models (None: none configured, or the upstream's names)."""
        return self.embedder.model_name if self.embedder is not None else None

    async def start(self) -> None:
        if self.embedder is not None:
            if self.embedder.model_name is None:
                log.warning(
                    "embeddings_upstream without embeddings_model: clients' model names go to it unchecked"
                )
            await self.embedder.start()

    async def close(self) -> None:
        if self.embedder is not None:
            await self.embedder.close()

    def route(self, principal: Principal, department: str | None, metrics: RequestMetrics) -> Route:
        """The department labels the metrics and chooses the limits, as on the other routes (an
        unknown one is 404 here too)."""
        route = self.tenancy.route(principal, department, self.tenancy.base_model)
        metrics.routed(route.tenant.name, route.department.name, EMBEDDING_ADAPTER_LABEL)
        return route

    async def create(self, body: EmbeddingRequest, metrics: RequestMetrics) -> dict[str, Any]:
        embedder = self.embedder
        if embedder is None:
            raise ModelNotFoundError(NOT_CONFIGURED, param="model")
        if embedder.model_name is not None and body.model != embedder.model_name:
            raise ModelNotFoundError(
                f"The model {quoted(body.model)} does not exist or you do not have access to it. "
                f"This gateway's embedding model is {quoted(embedder.model_name)}.",
                param="model",
            )
        answer = await embedder.embed(body, inputs_of(body))
        usage = answer.get("usage")
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if isinstance(tokens, int) and tokens > 0:
            metrics.prompt(tokens)
        return answer


def inputs_of(body: EmbeddingRequest) -> list[str]:
    """The inputs as text, after the checks OpenAI's schema cannot express."""
    given = body.input
    inputs = [given] if isinstance(given, str) else [i for i in given if isinstance(i, str)]
    if not isinstance(given, str) and len(inputs) != len(given):
        raise InvalidRequestError(
            "Token-id inputs are not supported: send the input as text (a string or a list of strings).",
            param="input",
            code="unsupported_parameter",
        )
    if not inputs:
        raise InvalidRequestError("input must not be an empty list.", param="input")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequestError(f"input may hold at most {MAX_EMBEDDING_INPUTS} texts.", param="input")
    if not all(inputs):
        raise InvalidRequestError("An input must not be an empty string.", param="input")
    return inputs
