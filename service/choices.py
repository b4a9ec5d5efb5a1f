"""An engine's deltas as OpenAI's choices: text, tool calls and logprobs, whole or as stream chunks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .domain import Delta, TokenLogprob, ToolCallDelta
from .sse import ChunkEvents


def logprob_entries(tokens: list[TokenLogprob]) -> list[dict[str, Any]]:
    """OpenAI's ``logprobs.content`` entries (``bytes`` as tuples: JSON arrays all the same)."""
    return [
        {
            "token": t.token,
            "logprob": t.logprob,
            "bytes": t.bytes,
            "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": a.bytes} for a in t.top],
        }
        for t in tokens
    ]


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class ChoiceBuilder:
    """One choice of a non-streamed answer, built from its deltas."""

    index: int
    logprobs: bool  # the request asked for them: ``logprobs.content`` is a list, even empty
    text: str = ""
    finish_reason: str | None = None
    tokens: list[TokenLogprob] = field(default_factory=list)
    calls: dict[int, _Call] = field(default_factory=dict)

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        if delta.logprobs:
            self.tokens += delta.logprobs
        for piece in delta.tool_calls or ():
            call = self.calls.setdefault(piece.index, _Call())
            call.id = piece.id or call.id
            call.name = piece.name or call.name
            call.arguments += piece.arguments
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason

    def json(self) -> dict[str, Any]:
        """The choice as OpenAI's JSON (``protocol.Choice``'s shape), built as plain dicts: a long
        answer's logprobs are ~20 objects a token, and pydantic models of them cost the event loop
        seconds (~120 us a token to validate, more to dump)."""
        calls = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for _, c in sorted(self.calls.items())
        ]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.text if self.text or not calls else None,
        }
        if calls:
            message["tool_calls"] = calls
        logprobs = {"content": logprob_entries(self.tokens), "refusal": None} if self.logprobs else None
        return {
            "index": self.index,
            "message": message,
            "finish_reason": self.finish_reason,
            "logprobs": logprobs,
        }


def tool_call_pieces(pieces: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """Stream pieces of tool calls as OpenAI's chunk ``delta.tool_calls``."""
    out = []
    for piece in pieces:
        function: dict[str, Any] = {"arguments": piece.arguments}
        entry: dict[str, Any] = {"index": piece.index}
        if piece.id is not None:
            entry["id"], entry["type"] = piece.id, "function"
        if piece.name is not None:
            function["name"] = piece.name
        entry["function"] = function
        out.append(entry)
    return out


def chunk_of(chunks: ChunkEvents, delta: Delta, logprobs: bool) -> str:
    """The chunk for a delta's text, tool calls and logprobs (not its finish)."""
    if not delta.tool_calls and not (logprobs and delta.logprobs):
        return chunks.choice(delta.index, content=delta.text) if delta.text else ""
    body: dict[str, Any] = {}
    if delta.text:
        body["content"] = delta.text
    if delta.tool_calls:
        body["tool_calls"] = tool_call_pieces(delta.tool_calls)
    entries = {"content": logprob_entries(delta.logprobs or []), "refusal": None} if logprobs else None
    return chunks.rich(delta.index, body, entries, None)
