"""Chat completions: request -> engine request -> OpenAI response or SSE stream.

The route stays thin; everything between the wire model and the engine lives
here, so both the streaming and the non-streaming paths share one validation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from .config import Settings
from .engines.base import ChatMessage, Delta, Engine, GenerationRequest, SamplingParams
from .errors import InvalidRequestError, LoragateError, ModelNotFoundError
from .protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Usage,
    new_completion_id,
)
from .sse import DONE, event

log = logging.getLogger(__name__)


@dataclass
class ChatService:
    engine: Engine
    settings: Settings

    def served_models(self) -> list[str]:
        return [self.engine.model_name]

    def to_engine_request(self, body: ChatCompletionRequest, request_id: str) -> GenerationRequest:
        if body.model not in self.served_models():
            raise ModelNotFoundError(
                f"The model `{body.model}` does not exist or you do not have access to it.", param="model"
            )
        if body.n > self.settings.max_n:
            raise InvalidRequestError(f"n must be at most {self.settings.max_n}.", param="n")
        if body.max_tokens and body.max_completion_tokens and body.max_tokens != body.max_completion_tokens:
            raise InvalidRequestError(
                "max_tokens and max_completion_tokens disagree; send one of them.", param="max_tokens"
            )
        temperature = 1.0 if body.temperature is None else body.temperature
        max_tokens = body.max_completion_tokens or body.max_tokens or self.settings.default_max_tokens
        if body.min_tokens > max_tokens:
            raise InvalidRequestError("min_tokens must not exceed max_tokens.", param="min_tokens")
        sampling = SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=max(body.top_k or 0, 0),
            min_p=body.min_p or 0.0,
            repetition_penalty=body.repetition_penalty or 1.0,
            min_tokens=body.min_tokens,
            ignore_eos=body.ignore_eos,
            seed=body.seed,
            stop=tuple(body.stop),
        )
        messages = [ChatMessage("system" if m.role == "developer" else m.role, m.text()) for m in body.messages]
        return GenerationRequest(request_id=request_id, messages=messages, sampling=sampling, n=body.n)

    async def complete(self, body: ChatCompletionRequest, request_id: str) -> ChatCompletion:
        request = self.to_engine_request(body, request_id)
        texts = [""] * request.n
        reasons: list[str | None] = [None] * request.n
        prompt_tokens = completion_tokens = 0
        async with aclosing(self.engine.stream(request)) as deltas:
            async for delta in deltas:
                texts[delta.index] += delta.text
                if delta.finish_reason is not None:
                    reasons[delta.index] = delta.finish_reason
                    prompt_tokens = delta.prompt_tokens
                    completion_tokens += delta.completion_tokens
        return ChatCompletion(
            id=new_completion_id(),
            model=body.model,
            choices=[
                Choice(index=i, message=AssistantMessage(content=texts[i]), finish_reason=reasons[i])
                for i in range(request.n)
            ],
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )

    async def open_stream(self, body: ChatCompletionRequest, request_id: str) -> AsyncIterator[str]:
        """Validate and start generating; errors up to the first token raise here (a real HTTP error)."""
        request = self.to_engine_request(body, request_id)
        deltas = self.engine.stream(request)
        try:
            first = await anext(deltas)
        except BaseException:
            await deltas.aclose()
            raise
        return self._sse(body, request.n, first, deltas)

    async def _sse(
        self, body: ChatCompletionRequest, n: int, first: Delta, deltas: AsyncIterator[Delta]
    ) -> AsyncIterator[str]:
        cid, created = new_completion_id(), int(time.time())
        usage_field = {"usage": None} if body.include_usage else {}

        def chunk(index: int, delta: dict[str, str], finish_reason: str | None = None) -> str:
            choice = ChunkChoice(index=index, delta=delta, finish_reason=finish_reason)
            payload = ChatCompletionChunk(
                id=cid, object="chat.completion.chunk", created=created, model=body.model, choices=[choice]
            )  # object passed explicitly: exclude_unset would drop a default
            return event(payload.model_dump(mode="json", exclude_unset=True) | usage_field)

        prompt_tokens = completion_tokens = 0
        try:
            async with aclosing(deltas):  # closing it aborts the engine's work
                for index in range(n):
                    yield chunk(index, {"role": "assistant", "content": ""})
                pending: Delta | None = first
                while pending is not None:
                    if pending.text:
                        yield chunk(pending.index, {"content": pending.text})
                    if pending.finish_reason is not None:
                        prompt_tokens = pending.prompt_tokens
                        completion_tokens += pending.completion_tokens
                        yield chunk(pending.index, {}, pending.finish_reason)
                    pending = await anext(deltas, None)
            if body.include_usage:
                usage = Usage(
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    total_tokens=prompt_tokens + completion_tokens,
                )
                yield event(ChatCompletionChunk(id=cid, created=created, model=body.model, choices=[], usage=usage))
        except LoragateError as exc:
            yield event(exc.envelope())
        except Exception:
            log.exception("stream failed")
            yield event(LoragateError("The server failed while streaming this response.").envelope())
        yield DONE
