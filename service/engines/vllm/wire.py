"""The wire between the gateway and a vLLM server: request bodies out, SSE chunks and errors in.

Pure functions, so the unit tests can script every case without a server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ...domain import Delta, FinishReason, GenerationRequest
from ...errors import (
    ContextLengthError,
    InvalidRequestError,
    LoragateError,
    ModelNotFoundError,
    UpstreamError,
)

BURST = 8  # events relayed in a row before others get the event loop (the last chunks of an answer fit)


def chat_body(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The body for vLLM's /v1/chat/completions: always streamed, always with usage."""
    s = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
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
    return body


def error_message(payload: Any, fallback: str) -> str:
    """vLLM's error text from ``{"error": {"message"}}`` or ``{"object": "error", "message"}``."""
    if isinstance(payload, dict):
        inner = payload.get("error", payload)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return fallback


def request_error(status: int, text: str) -> LoragateError:
    """A non-2xx answer to a chat request, as the error the client should see."""
    try:
        message = error_message(json.loads(text), text[:500])
    except ValueError:
        message = text[:500] or f"vLLM answered {status}"
    if status == 400:
        lowered = message.lower()
        if any(hint in lowered for hint in _CONTEXT_HINTS):
            return ContextLengthError(message, param="messages")
        return InvalidRequestError(message)
    if status == 404:
        return ModelNotFoundError(message, param="model")
    return UpstreamError(f"The model server failed this request ({status}): {message}")


_CONTEXT_HINTS = ("context length", "max_model_len", "maximum model length", "too long")
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort"}


@dataclass
class ChunkReader:
    """Turns vLLM's SSE ``data:`` payloads into deltas for ``n`` choices.

    Text goes out as it arrives. A choice's finish waits for the usage chunk that vLLM
    sends after the last choice ends (straight after it, for ``n=1``), so that the
    finishing deltas carry the token counts: the prompt's on each, the completion's
    total on the last one.
    """

    n: int
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
            chunk = json.loads(data)
        except ValueError:
            raise UpstreamError("The model server sent a malformed stream.") from None
        if not isinstance(chunk, dict):
            raise UpstreamError("The model server sent a malformed stream.")
        if "error" in chunk or chunk.get("object") == "error":
            raise UpstreamError(error_message(chunk, "The model server failed while generating."))
        out: list[Delta] = []
        for choice in chunk.get("choices") or ():
            index = int(choice.get("index", 0))
            text = (choice.get("delta") or {}).get("content") or ""
            if text:
                out.append(Delta(index, text))
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

    def finish(self) -> list[Delta]:
        """The held finishing deltas, once (at the usage chunk, or at ``[DONE]`` without one)."""
        if not self.finished:
            return []
        indexes = sorted(self.finished)
        out = [
            Delta(i, "", self.finished[i], prompt_tokens=self.prompt_tokens, completion_tokens=0)
            for i in indexes
        ]
        out[-1].completion_tokens = self.completion_tokens
        self.finished = {}
        self.ended += len(indexes)
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
