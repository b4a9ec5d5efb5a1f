"""The wire between the gateway and a vLLM server: request bodies out, SSE chunks and errors in.

Pure functions, so the unit tests can script every case without a server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ... import fastjson
from ...domain import (
    ChatMessage,
    Constraint,
    Delta,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
)
from ...errors import (
    ContextLengthError,
    InvalidRequestError,
    LoragateError,
    ModelNotFoundError,
    UpstreamError,
)
from ..base import ServedDelta

BURST = 8  # events relayed in a row before others get the event loop (the last chunks of an answer fit)
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"  # a raw prompt (``request.prompt``): no chat template


def request_body(request: GenerationRequest, model: str) -> tuple[str, dict[str, Any]]:
    """The path and body for ``request``: chat, or a completion of ``request.prompt`` as it is."""
    if request.prompt is not None:
        return COMPLETIONS_PATH, completion_body(request, model)
    return CHAT_PATH, chat_body(request, model)


def chat_body(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The body for vLLM's /v1/chat/completions: always streamed, always with usage.

    Fields beyond the common sampling ones go out only when they differ from vLLM's defaults:
    most requests carry none of them, and the body stays as small as it was.
    """
    s = request.sampling
    body = _common(request, model)
    body["messages"] = [
        _message(m) if m.tool_calls or m.tool_call_id is not None else {"role": m.role, "content": m.content}
        for m in request.messages
    ]
    if s.logprobs:
        body["logprobs"] = True
        if s.top_logprobs:
            body["top_logprobs"] = s.top_logprobs
    if request.tools:
        body["tools"] = list(request.tools)
        body["tool_choice"] = request.tool_choice
        body["parallel_tool_calls"] = request.parallel_tool_calls
    return body


def completion_body(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The body for vLLM's /v1/completions, for a raw prompt.

    Logprobs are in the completions API's form: ``logprobs`` = how many alternatives. The
    prompt's own logprobs come with ``echo``, on each choice's first chunk; ``return_token_ids``
    makes vLLM leave the prompt's text out of that chunk and say how many prompt tokens lead its
    logprobs (vLLM 0.32 refuses ``prompt_logprobs`` itself in a stream).
    """
    s = request.sampling
    body = _common(request, model)
    body["prompt"] = request.prompt
    if s.logprobs or s.prompt_logprobs:
        body["logprobs"] = s.top_logprobs
    if s.prompt_logprobs:
        body["echo"] = True
        body["return_token_ids"] = True
    return body


def _common(request: GenerationRequest, model: str) -> dict[str, Any]:
    s = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},  # token accounting, whatever the client asked
        "n": request.n,
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k if s.top_k > 0 else -1,
        "min_p": s.min_p,
        "repetition_penalty": s.repetition_penalty,
        "min_tokens": s.min_tokens,
        "ignore_eos": s.ignore_eos,
    }
    if s.seed is not None:
        body["seed"] = s.seed
    if s.stop:
        body["stop"] = list(s.stop)
    if s.presence_penalty or s.frequency_penalty or s.logit_bias:
        _penalties(s, body)
    if request.constraint is not None:
        body["response_format"] = response_format(request.constraint)
    return body


def _penalties(s: SamplingParams, body: dict[str, Any]) -> None:
    if s.presence_penalty:
        body["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty:
        body["frequency_penalty"] = s.frequency_penalty
    if s.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in s.logit_bias}


def response_format(constraint: Constraint) -> dict[str, Any]:
    """OpenAI's ``response_format`` for a constraint; vLLM compiles it with its structured-output
    backend (xgrammar)."""
    if constraint.kind == "json_object":
        return {"type": "json_object"}
    schema = dict(constraint.schema or {})
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}


def _message(m: ChatMessage) -> dict[str, Any]:
    """An assistant message with tool calls, or a tool message, in OpenAI's form."""
    message: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        message["content"] = m.content or None
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        message["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            message["name"] = m.name
    return message


def error_message(payload: Any, fallback: str) -> str:
    """vLLM's error text from ``{"error": {"message"}}`` or ``{"object": "error", "message"}``."""
    if isinstance(payload, dict):
        inner = payload.get("error", payload)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return fallback


NO_TOOL_PARSER = (
    "Tool calling with tool_choice 'auto' is not enabled on this deployment: its vLLM servers run"
    " without a tool-call parser (they need --enable-auto-tool-choice --tool-call-parser NAME;"
    " with --spawn, set LORAGATE_TOOL_CALL_PARSER). Send tool_choice 'none', 'required' or a named"
    " function, or no tools."
)


def request_error(status: int, text: str, input_param: str = "messages") -> LoragateError:
    """A non-2xx answer to a generation request, as the error the client should see.

    ``input_param`` names what a too-long input is: ``messages``, or ``prompt`` for a completion.
    """
    payload = _json(text)
    message = error_message(payload, text[:500] or f"vLLM answered {status}")
    if status == 400:
        lowered = message.lower()
        if "--tool-call-parser" in lowered or "--enable-auto-tool-choice" in lowered:
            return InvalidRequestError(NO_TOOL_PARSER, param="tools", code="unsupported_parameter")
        if any(hint in lowered for hint in _CONTEXT_HINTS):
            return ContextLengthError(message, param=input_param)
        return InvalidRequestError(message, param=_param(payload))
    if status == 404:
        return ModelNotFoundError(message, param="model")
    return UpstreamError(f"The model server failed this request ({status}): {message}")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _param(payload: Any) -> str | None:
    """The request field vLLM names in its refusal (``{"error": {"param"}}``), if any."""
    inner = payload.get("error") if isinstance(payload, dict) else None
    param = inner.get("param") if isinstance(inner, dict) else None
    return param if isinstance(param, str) and param else None


_CONTEXT_HINTS = ("context length", "max_model_len", "maximum model length", "too long")
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "tool_calls": "tool_calls",
}


@dataclass
class ChunkReader:
    """Turns vLLM's SSE ``data:`` payloads of a chat stream into deltas for ``n`` choices.

    Text goes out as it arrives, with its logprobs and tool-call pieces when there are any. A
    choice's finish waits for the usage chunk that vLLM sends after the last choice ends
    (straight after it, for ``n=1``), so that the finishing deltas carry the token counts: the
    prompt's on each, the completion's total on the last one.
    """

    n: int
    served_by: str | None = None  # the replica: named on the finishing deltas (``ServedDelta``)
    finished: dict[int, FinishReason] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ended: int = 0  # choices whose finishing delta went out
    done: bool = False  # [DONE] seen

    def feed(self, data: str) -> list[Delta]:
        if data == "[DONE]":
            self.done = True
            return self.finish()
        try:
            chunk = fastjson.loads(data)
        except ValueError:
            raise UpstreamError("The model server sent a malformed stream.") from None
        if not isinstance(chunk, dict):
            raise UpstreamError("The model server sent a malformed stream.")
        if "error" in chunk or chunk.get("object") == "error":
            raise UpstreamError(error_message(chunk, "The model server failed while generating."))
        out: list[Delta] = []
        for choice in chunk.get("choices") or ():
            index = int(choice.get("index", 0))
            delta = self.delta(index, choice)
            if delta is not None:
                out.append(delta)
            reason = choice.get("finish_reason")
            if reason is not None:
                self.finished[index] = _FINISH.get(reason, "stop")
        usage = chunk.get("usage")
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
            if len(self.finished) >= self.n:
                out += self.finish()
        return out

    def delta(self, index: int, choice: dict[str, Any]) -> Delta | None:
        """What one chat choice of a chunk brings: text, logprobs, tool-call pieces; None if nothing."""
        message = choice.get("delta") or {}
        text = message.get("content") or ""
        calls = message.get("tool_calls")
        logprobs = choice.get("logprobs")
        if not (calls or logprobs):
            return Delta(index, text) if text else None
        out = Delta(index, text)
        if calls:
            out.tool_calls = [_tool_call(call) for call in calls]
        if logprobs and logprobs.get("content"):
            out.logprobs = [_chat_logprob(entry) for entry in logprobs["content"]]
        return out if text or out.tool_calls or out.logprobs else None

    def finish(self) -> list[Delta]:
        """The held finishing deltas, once (at the usage chunk, or at ``[DONE]`` without one)."""
        if not self.finished:
            return []
        indexes = sorted(self.finished)
        replica = self.served_by
        out: list[Delta] = [
            Delta(i, "", self.finished[i], prompt_tokens=self.prompt_tokens, completion_tokens=0)
            if replica is None
            else ServedDelta(i, "", self.finished[i], prompt_tokens=self.prompt_tokens, replica=replica)
            for i in indexes
        ]
        out[-1].completion_tokens = self.completion_tokens
        self.finished = {}
        self.ended += len(indexes)
        return out


@dataclass
class CompletionReader(ChunkReader):
    """The same for a stream of /v1/completions (``choices[].text``, the completions API's logprobs).

    With ``prompt_logprobs`` (sent as ``echo`` + ``return_token_ids``), each choice's first chunk
    leads its logprobs with the prompt's tokens, as many as its ``prompt_token_ids``: they go on
    that choice's first delta as ``prompt_logprobs`` (the first token's is None), the rest as
    ``logprobs`` when ``logprobs`` was asked for.

    The completions API lists the sampled token beside the ``top`` most likely ones; a
    ``TokenLogprob``'s ``top`` holds just the ``top`` most likely, as for chat.
    """

    logprobs: bool = False
    top: int = 0

    def delta(self, index: int, choice: dict[str, Any]) -> Delta | None:
        text = choice.get("text") or ""
        logprobs = choice.get("logprobs")
        prompt_ids = choice.get("prompt_token_ids")
        if not (logprobs or prompt_ids):
            return Delta(index, text) if text else None
        tokens = _completion_logprobs(logprobs, self.top) if logprobs else []
        out = Delta(index, text)
        if prompt_ids:  # the echo: this choice's first chunk
            lead = len(prompt_ids)
            out.prompt_logprobs = [t if t is not None and i else None for i, t in enumerate(tokens[:lead])]
            tokens = tokens[lead:]
        if self.logprobs and tokens:
            out.logprobs = [t for t in tokens if t is not None]
        return out if text or out.logprobs or out.prompt_logprobs is not None else None


def _tool_call(call: dict[str, Any]) -> ToolCallDelta:
    function = call.get("function") or {}
    return ToolCallDelta(
        index=int(call.get("index", 0)),
        id=call.get("id"),
        name=function.get("name"),
        arguments=function.get("arguments") or "",
    )


def _chat_logprob(entry: dict[str, Any]) -> TokenLogprob:
    top = tuple(
        TopLogprob(t["token"], float(t["logprob"]), _bytes(t.get("bytes")))
        for t in entry.get("top_logprobs") or ()
    )
    return TokenLogprob(entry["token"], float(entry["logprob"]), _bytes(entry.get("bytes")), top)


def _bytes(value: Any) -> tuple[int, ...] | None:
    return tuple(value) if value is not None else None


def _completion_logprobs(logprobs: dict[str, Any], top: int) -> list[TokenLogprob | None]:
    """The completions API's parallel lists (tokens, token_logprobs, top_logprobs), one entry a token
    with its ``top`` likeliest alternatives; None for a token without a logprob (a prompt's first)."""
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    out: list[TokenLogprob | None] = []
    for i, token in enumerate(tokens):
        value = values[i] if i < len(values) else None
        if value is None:
            out.append(None)
            continue
        listed = (tops[i] if i < len(tops) else None) or {}
        likeliest = sorted(listed.items(), key=lambda item: -item[1])[:top]  # stable: vLLM's order on ties
        out.append(
            TokenLogprob(token, float(value), top=tuple(TopLogprob(t, float(v)) for t, v in likeliest))
        )
    return out


async def data_lines(stream: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """The ``data:`` payloads of a server-sent event stream, however its bytes were split, up to ``[DONE]``.

    ``[DONE]`` ends the stream for its reader; what follows it (the end of a chunked body) is
    not waited for. Many events in one read mean the upstream is ahead of the gateway. Reads
    and sends then complete without suspending, and one stream would hold the event loop
    while the others wait; so every ``BURST`` events of a read, it lets the loop run.
    """
    pending = b""
    async for chunk in stream:
        *lines, pending = (pending + chunk).split(b"\n")
        in_a_row = 0
        for line in lines:
            if line.startswith(b"data:"):
                if in_a_row == BURST:
                    await asyncio.sleep(0)
                    in_a_row = 0
                in_a_row += 1
                data = line[5:].strip().decode()
                yield data
                if data == "[DONE]":
                    return
    if pending.startswith(b"data:"):  # a last line without its newline
        yield pending[5:].strip().decode()
