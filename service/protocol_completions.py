"""OpenAI wire models for ``/v1/completions`` and ``/v1/embeddings``: the contract, nothing else.

Unlike chat, these requests refuse unknown fields with 400 (``extra="forbid"``), as OpenAI does;
vLLM's extra sampling parameters (``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``,
``ignore_eos``) are documented extensions and accepted. The fields OpenAI knows but the gateway
cannot honour (``suffix``, token-id prompts, ``best_of`` other than ``n``) parse here and are refused
by the services with ``unsupported_parameter``, so that the error names the field.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .protocol import MAX_STOP_CHARS, MIN_REPETITION_PENALTY, StreamOptions, Usage

MAX_LOGPROBS = 20  # OpenAI allows 5; vLLM's default max_logprobs is 20
MAX_PROMPTS = 256  # prompts in one request; each runs as its own generation request
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit
MAX_LOGIT_BIAS = 1024  # entries

TokenIds = list[int]


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    # Token-id prompts parse (they are OpenAI's) and get 400 unsupported_parameter from the service.
    prompt: str | list[str] | TokenIds | list[TokenIds]
    suffix: str | None = None  # refused unless empty: no model here does fill-in-the-middle
    max_tokens: Annotated[int, Field(ge=1)] | None = None  # OpenAI's default: 16
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1)] = 1
    best_of: Annotated[int, Field(ge=1)] | None = None  # only None, 1 or n
    stop: Annotated[list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=16)] = []
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    logit_bias: (
        Annotated[dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]], Field(max_length=MAX_LOGIT_BIAS)]
        | None
    ) = None
    user: str | None = None
    # vLLM's extra sampling parameters
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(ge=MIN_REPETITION_PENALTY, le=10.0)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] = 0
    ignore_eos: bool = False

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("top_k")
    @classmethod
    def _top_k_beyond_any_vocabulary_is_off(cls, value: int | None) -> int | None:
        return -1 if value is not None and value >= 2**24 else value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


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
    return f"cmpl-{secrets.token_hex(16)}"


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
