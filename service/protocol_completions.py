"""OpenAI wire models for ``/v1/completions`` and ``/v1/embeddings``: the contract, nothing else.

As chat's, these requests refuse unknown fields with 400 (``extra="forbid"``), as OpenAI does, and
completions share chat's sampling fields (``protocol.SamplingFields``, with vLLM's documented
extras). The fields OpenAI knows but the gateway cannot honour (``suffix``, token-id prompts,
``best_of`` other than ``n``) parse here and are refused by the services with
``unsupported_parameter``, so that the error names the field.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from .ids import unique_hex
from .protocol import SamplingFields, Usage

MAX_LOGPROBS = 20  # OpenAI allows 5; vLLM's default max_logprobs is 20
MAX_PROMPTS = 256  # prompts in one request; each runs as its own generation request
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit

TokenIds = list[int]


class CompletionRequest(SamplingFields):
    # Token-id prompts parse (they are OpenAI's) and get 400 unsupported_parameter from the service.
    prompt: str | list[str] | TokenIds | list[TokenIds]
    suffix: str | None = None  # refused unless empty: no model here does fill-in-the-middle
    max_tokens: Annotated[int, Field(ge=1)] | None = None  # OpenAI's default: 16
    best_of: Annotated[int, Field(ge=1)] | None = None  # only None, 1 or n
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy format; ``text_offset`` is each token's character offset in the choice's ``text``."""

    tokens: list[str]
    token_logprobs: list[float | None]  # None: the first prompt token (nothing precedes it)
    top_logprobs: list[dict[str, float] | None]  # the `logprobs` most likely tokens, and the chosen one
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int  # prompt_index * n + i
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


def new_text_completion_id() -> str:
    return f"cmpl-{unique_hex()}"


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(BaseModel):
    """A streamed event: one choice's new text; the last event (``include_usage``) has no choices."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    # Token-id inputs parse (they are OpenAI's) and get 400 unsupported_parameter from the service.
    input: str | list[str] | TokenIds | list[TokenIds]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None  # only the model's own
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
