"""Incremental detokenisation and stop strings, for streaming output.

``TextStream`` turns token ids into text deltas as they come. It never emits
half a UTF-8 character, and it holds back the tail of the text that could be
the start of a stop string, so a stop string never reaches the client, even
when it spans several tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Detokenizer(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


class TextStream:
    def __init__(self, tokenizer: Detokenizer, stop: Sequence[str] = ()):
        self._tokenizer = tokenizer
        self._stop = [s for s in stop if s]
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""  # all text decoded so far (a stop string cuts it)
        self._emitted = 0  # how much of ``text`` was handed out
        self.stopped = False
        self._stops_from = 0  # a stop string must end after this offset (see ``add``)

    def add(self, token_id: int, *, check_stops: bool = True) -> str:
        """Add one token; return the text that may be sent now.

        ``check_stops=False`` (before ``min_tokens`` is reached, as in vLLM): stop strings are
        not looked for, and later only a stop string that ends after this point counts.
        """
        self._ids.append(token_id)
        self._decode(final=False)
        if not check_stops:
            self._stops_from = len(self.text)
            out = self.text[self._emitted :]
            self._emitted = len(self.text)
            return out
        return self._release()

    @property
    def emitted(self) -> int:
        """How much of ``text`` was handed out."""
        return self._emitted

    @property
    def caught_up(self) -> bool:
        """Every token added so far has its text in ``text`` (none waits for the rest of a character)."""
        return self._read_offset == len(self._ids)

    def flush(self) -> str:
        """Everything still held back (the sequence ended without a stop string).

        Tokens that end in an incomplete character are decoded as they are (with U+FFFD),
        as ``tokenizer.decode`` does, rather than dropped.
        """
        if self.stopped:
            return ""
        self._decode(final=True)
        out = self._release()
        if self.stopped:
            return out
        rest = self.text[self._emitted :]
        self._emitted = len(self.text)
        return out + rest

    def _decode(self, final: bool) -> None:
        """Append the text of the tokens not yet decoded, unless it ends mid-character."""
        decode = self._tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        full = decode(self._ids[self._prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and (final or not full.endswith("\ufffd")):
            self.text += full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)

    def _release(self) -> str:
        if self._stop:
            start = max(0, self._emitted - max(len(s) for s in self._stop))
            hits = [
                i
                for i in (self.text.find(s, max(start, self._stops_from - len(s) + 1)) for s in self._stop)
                if i >= 0
            ]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                out = self.text[self._emitted :]
                self._emitted = len(self.text)
                return out
        safe = len(self.text) - self._held_back()
        out = self.text[self._emitted : safe]
        self._emitted = max(self._emitted, safe)
        return out

    def _held_back(self) -> int:
        """Length of the longest suffix of the text that begins some stop string."""
        best = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self.text)), best, -1):
                if self.text.endswith(stop[:size]):
                    best = size
                    break
        return best
