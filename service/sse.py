"""Server-Sent Events framing, as openai-python's stream reader expects it."""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as quote
from typing import Any

from pydantic import BaseModel

DONE = "data: [DONE]\n\n"


def event(payload: BaseModel | dict[str, Any]) -> str:
    body = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {body}\n\n"


class ChunkEvents:
    """The ``chat.completion.chunk`` events of one response, as ``event`` would write them.

    They are the stream's hot path: the fields every chunk shares are encoded once, and a
    chunk's own few fields are quoted by the JSON encoder's C string function, where a
    ``json.dumps`` per chunk would cost several times more.
    """

    def __init__(self, completion_id: str, created: int, model: str, *, usage_field: bool):
        head = json.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created})
        self._open = f'data: {head[:-1]}, "model": {quote(model)}, "choices": ['
        self._close = '], "usage": null}\n\n' if usage_field else "]}\n\n"

    def choice(
        self,
        index: int,
        *,
        role: str | None = None,
        content: str | None = None,
        finish_reason: str | None = None,
    ) -> str:
        delta = []
        if role is not None:
            delta.append(f'"role": {quote(role)}')
        if content is not None:
            delta.append(f'"content": {quote(content)}')
        finish = "null" if finish_reason is None else quote(finish_reason)
        choice = f'{{"index": {int(index)}, "delta": {{{", ".join(delta)}}}, "finish_reason": {finish}}}'
        return self._open + choice + self._close

    def rich(
        self, index: int, delta: dict[str, Any], logprobs: dict[str, Any] | None, finish: str | None
    ) -> str:
        """A chunk with tool calls or logprobs: rarer, so encoded whole by ``json.dumps``."""
        choice = {"index": int(index), "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return self._open + json.dumps(choice) + self._close

    def usage(self, usage: dict[str, int]) -> str:
        return f'{self._open}], "usage": {json.dumps(usage)}}}\n\n'
