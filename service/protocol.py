"""OpenAI chat-completions wire models: the contract, nothing else.

Requests accept the OpenAI fields plus vLLM's extra sampling parameters
(``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``, ``ignore_eos``)
that clients send through ``extra_body``. A field that OpenAI does not know gets 400
(``unknown_parameter``), as OpenAI answers; one that OpenAI knows and would change the answer,
but that loragate does not serve, gets 400 ``unsupported_parameter`` (``UNSUPPORTED``). Nothing
that changes the output is silently ignored (docs/api.md has the table).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from .errors import InvalidRequestError
from .ids import unique_hex

MIN_REPETITION_PENALTY = 0.01
MAX_LOGIT_BIAS = 1024  # entries; each is applied to every row that asks, at every step
MAX_STOP_CHARS = 512  # each stop string is looked for after every token, in every row of the batch


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class MessageToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None  # an assistant's calls
    tool_call_id: str | None = None  # a tool message: the call it answers

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs the tool_call_id it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message can have tool_calls")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(pattern=TOOL_NAME)]
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; none: no arguments
    strict: bool | None = None  # loragate always decodes forced calls under the schema


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: Annotated[str, Field(pattern=TOOL_NAME)]
    description: str | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        return self


# Fields OpenAI knows that would change the answer and that loragate does not serve: 400, never ignored.
UNSUPPORTED = {
    "functions": "Use `tools` instead of the deprecated `functions`.",
    "function_call": "Use `tool_choice` instead of the deprecated `function_call`.",
    "audio": "Audio output is not supported.",
    "modalities": "Only text output is supported.",
    "prediction": "Predicted outputs are not supported.",
    "reasoning_effort": "Reasoning effort is not supported.",
    "web_search_options": "Web search is not supported.",
    "verbosity": "verbosity is not supported.",
    "moderation": "Moderation is not supported.",
}
# OpenAI's kinds of tools and tool choices that loragate does not serve (it serves function tools).
UNSUPPORTED_TOOL_TYPES = {"custom": "Custom (free-form text) tools are not supported; use function tools."}
UNSUPPORTED_PARTS = frozenset({"image_url", "input_audio", "file", "refusal"})  # OpenAI's, other than text
UNSUPPORTED_TOOL_CHOICES = {
    "allowed_tools": "An allowed_tools tool_choice is not supported; send the allowed tools as `tools`.",
    "custom": "Custom tools are not supported; name a function tool.",
}


class SamplingFields(BaseModel):
    """The sampling fields chat and completions share (one definition, one set of bounds)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1)] = 1
    # a factory, not ``= []``: pydantic deep-copies a mutable default for every request it parses
    stop: Annotated[
        list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=16, default_factory=list)
    ]
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None  # torch generators take int64
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    logit_bias: (
        Annotated[dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]], Field(max_length=MAX_LOGIT_BIAS)]
        | None
    ) = None
    user: str | None = None  # accepted; changes nothing in the answer
    # vLLM's extra sampling parameters
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    # Bounded so that no value can overflow a logit (x / 1e-300 is inf); vLLM only asks for > 0.
    repetition_penalty: Annotated[float, Field(ge=MIN_REPETITION_PENALTY, le=10.0)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] = 0
    ignore_eos: bool = False

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        """OpenAI accepts one string or a list of strings."""
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("top_k")
    @classmethod
    def _top_k_beyond_any_vocabulary_is_off(cls, value: int | None) -> int | None:
        """A k at least as large as any vocabulary keeps every token: -1 (off), as an engine's int32."""
        return -1 if value is not None and value >= 2**24 else value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or ():
            if not key.isdigit() or len(key) > 9:
                raise ValueError("logit_bias keys are token ids (non-negative integers, as strings)")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    # Accepted, and they change nothing in the answer (documented): who asks, and OpenAI's storage and tiers.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    # OpenAI's, refused (UNSUPPORTED): typed Any so that the refusal, not a type error, answers them.
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None
    verbosity: Any = None
    moderation: Any = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported_kinds(cls, data: Any) -> Any:
        """OpenAI's custom tools, allowed_tools choices and (deprecated) function messages: 400
        unsupported_parameter naming the field, not a type error about the union they miss."""
        if not isinstance(data, dict):
            return data
        tools, choice = data.get("tools"), data.get("tool_choice")
        for i, tool in enumerate(tools if isinstance(tools, list) else ()):
            why = UNSUPPORTED_TOOL_TYPES.get(str(tool.get("type"))) if isinstance(tool, dict) else None
            if why is not None:
                raise InvalidRequestError(why, param=f"tools.{i}.type", code="unsupported_parameter")
        why = UNSUPPORTED_TOOL_CHOICES.get(str(choice.get("type"))) if isinstance(choice, dict) else None
        if why is not None:
            raise InvalidRequestError(why, param="tool_choice", code="unsupported_parameter")
        messages = data.get("messages")
        for i, message in enumerate(messages if isinstance(messages, list) else ()):
            if not isinstance(message, dict):
                continue
            if message.get("role") == "function":
                raise InvalidRequestError(
                    "Messages with the deprecated role 'function' are not supported: use tool messages.",
                    param=f"messages.{i}.role",
                    code="unsupported_parameter",
                )
            parts = message.get("content")
            for part in parts if isinstance(parts, list) else ():
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in UNSUPPORTED_PARTS:
                    raise InvalidRequestError(
                        f"Content parts of type `{kind}` are not supported: only text is.",
                        param=f"messages.{i}.content",
                        code="unsupported_parameter",
                    )
        return data

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> ChatCompletionRequest:
        """Raised as the OpenAI 400 itself (not a ValueError), so that the code is unsupported_parameter."""
        for name, why in UNSUPPORTED.items():
            value = getattr(self, name)
            if value is None or (name == "modalities" and value == ["text"]):
                continue
            raise InvalidRequestError(
                f"`{name}` is not supported by this server. {why}", param=name, code="unsupported_parameter"
            )
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequestError("top_logprobs needs logprobs set to true.", param="top_logprobs")
        return self


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(TopLogprobOut):
    top_logprobs: list[TopLogprobOut] = []


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None
    refusal: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[MessageToolCall] | None = None

    @model_serializer(mode="wrap")
    def _no_empty_tool_calls(self, handler: Any) -> Any:
        """``tool_calls`` only when there are calls (as OpenAI answers); ``content`` always."""
        data = handler(self)
        if not data.get("tool_calls"):
            data.pop("tool_calls", None)
        return data


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


def new_completion_id() -> str:
    return f"chatcmpl-{unique_hex()}"


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage


class ChunkChoice(BaseModel):
    index: int
    delta: dict[str, Any]  # role, content, tool_calls; {} on the finishing chunk
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "loragate"
    parent: str | None = None
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
