"""``tool_choice: "auto"``: the model's ``<tool_call>{json}</tool_call>`` text becomes tool calls.

Per choice, text streams as content until a possible ``<tool_call>`` tag; from there on it is
held. When the choice finishes, each call in the held text becomes a :class:`ToolCallDelta`
and the choice finishes with "tool_calls". A malformed call (JSON that does not parse, a name
that is not one of the tools, a missing name or arguments) sends the held text as plain
content instead, with the finish reason the engine gave: a broken call never breaks the answer.

Logprob entries travel with their text: held text holds its entries, and they go out with it
(or with the calls).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncGenerator, Collection
from contextlib import aclosing
from dataclasses import dataclass

from ...domain import Delta, TokenLogprob, ToolCallDelta
from .tools import CLOSE, OPEN

_CALL = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|\Z)", re.DOTALL)


async def parse_tool_calls(
    deltas: AsyncGenerator[Delta, None], names: Collection[str], parallel: bool = True
) -> AsyncGenerator[Delta, None]:
    """The engine's deltas, with each choice's tool-call text turned into tool calls."""
    parsers: dict[int, ToolCallParser] = {}
    async with aclosing(deltas):
        async for delta in deltas:
            parser = parsers.setdefault(delta.index, ToolCallParser(delta.index, names, parallel))
            out = parser.feed(delta)
            if out is not None:
                yield out


@dataclass
class _Chunk:
    end: int  # where this delta's text ends in the choice's text
    logprobs: list[TokenLogprob]


class ToolCallParser:
    """One choice: ``feed`` each delta, get the delta to send now (or None)."""

    def __init__(self, index: int, names: Collection[str], parallel: bool = True):
        self.index = index
        self._names = set(names)
        self._parallel = parallel
        self._text = ""  # the choice's whole text so far
        self._released = 0  # how much of it went out as content
        self._in_call = False  # a <tool_call> tag was seen: hold everything from it
        self._chunks: list[_Chunk] = []
        self._logprobs = False
        self._queue_seconds: float | None = None
        self._prompt_logprobs: list[TokenLogprob | None] | None = None

    def feed(self, delta: Delta) -> Delta | None:
        self._text += delta.text
        if delta.logprobs is not None:
            self._logprobs = True
            self._chunks.append(_Chunk(len(self._text), delta.logprobs))
        if delta.queue_seconds is not None:
            self._queue_seconds = delta.queue_seconds
        if delta.prompt_logprobs is not None:
            self._prompt_logprobs = delta.prompt_logprobs
        if delta.finish_reason is not None:
            return self._finish(delta)
        if not self._in_call:
            found = self._text.find(OPEN, self._released)
            if found >= 0:
                self._in_call = True
                return self._release(found)
            return self._release(len(self._text) - _partial_tag(self._text, self._released))
        return None

    def _release(self, upto: int) -> Delta | None:
        if upto <= self._released:
            return None
        out = self._delta(self._text[self._released : upto], self._entries(upto))
        self._released = upto
        return out

    def _finish(self, last: Delta) -> Delta:
        held = self._text[self._released :]
        # the tag may come in the finishing delta itself (text held back until the end)
        parsed = parse_calls(held, self._names) if self._in_call or OPEN in held else None
        if parsed is None:
            out = self._delta(held, self._entries(len(self._text)))
            out.finish_reason = last.finish_reason
        else:
            content, calls = parsed
            out = self._delta(content, self._entries(len(self._text)))
            out.tool_calls = calls if self._parallel else calls[:1]
            out.finish_reason = "tool_calls"
        out.prompt_tokens, out.completion_tokens = last.prompt_tokens, last.completion_tokens
        self._released = len(self._text)
        return out

    def _entries(self, upto: int) -> list[TokenLogprob] | None:
        if not self._logprobs:
            return None
        count = 0
        for chunk in self._chunks:
            if chunk.end > upto:
                break
            count += 1
        out, self._chunks = self._chunks[:count], self._chunks[count:]
        return [entry for chunk in out for entry in chunk.logprobs]

    def _delta(self, text: str, logprobs: list[TokenLogprob] | None) -> Delta:
        delta = Delta(
            self.index,
            text,
            queue_seconds=self._queue_seconds,
            logprobs=logprobs,
            prompt_logprobs=self._prompt_logprobs,
        )
        self._queue_seconds = self._prompt_logprobs = None
        return delta


def parse_calls(held: str, names: Collection[str]) -> tuple[str, list[ToolCallDelta]] | None:
    """The calls in ``held`` and the text around them; None if any call is malformed.

    A block holds one call object, or a list of them (SmolLM2's own format).
    """
    calls: list[ToolCallDelta] = []
    outside: list[str] = []
    position = 0
    for match in _CALL.finditer(held):
        outside.append(held[position : match.start()])
        position = match.end()
        try:
            body = json.loads(match.group(1))
        except ValueError:
            return None
        for call in body if isinstance(body, list) else [body]:
            parsed = _call(call, names, len(calls))
            if parsed is None:
                return None
            calls.append(parsed)
    outside.append(held[position:])
    if not calls:
        return None
    return "".join(outside).strip(), calls


def _call(body: object, names: Collection[str], index: int) -> ToolCallDelta | None:
    if not isinstance(body, dict):
        return None
    name, arguments = body.get("name"), body.get("arguments")
    if not isinstance(name, str) or name not in names or not isinstance(arguments, dict):
        return None
    return ToolCallDelta(
        index, f"call_{secrets.token_hex(12)}", name, json.dumps(arguments, ensure_ascii=False)
    )


def _partial_tag(text: str, start: int) -> int:
    """The length of the longest end of ``text[start:]`` that begins ``<tool_call>``."""
    for size in range(min(len(OPEN) - 1, len(text) - start), 0, -1):
        if text.endswith(OPEN[:size]):
            return size
    return 0
