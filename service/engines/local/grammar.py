"""Grammar-constrained decoding with llguidance: JSON (any object, or a JSON schema) per row.

Why llguidance: measured on SmolLM2's tokenizer it compiles a tool-call schema in ~1 ms, fills
a row's token mask in ~10 us, handles recursive JSON (``json_object``) natively and has no
dependencies (docs/structured-output.md has the figures against xgrammar and outlines-core).

A compiled grammar is a warmed ``LLMatcher`` kept per ``Constraint.key`` (LRU); each row decodes
with its own copy, so the n choices of a request, and the rows of different requests, never
share state. Compilation runs off the event loop; masks and token checks run on the worker.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...domain import Constraint
from ...errors import InvalidRequestError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# Compact JSON, no free whitespace: a small model under a grammar that allows whitespace
# anywhere can spend its whole token budget on newlines.
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


class GrammarError(RuntimeError):
    """A row's matcher refused a token or broke: that row's request fails, alone."""


class Grammar:
    """One compiled constraint: a warmed matcher that rows copy."""

    def __init__(self, template: Any, vocab_size: int):
        self._template = template
        self.vocab_size = vocab_size

    def row(self) -> RowGrammar:
        return RowGrammar(self._template.deep_copy(), self.vocab_size)


class RowGrammar:
    """One row's matcher state: masks its logits, follows its tokens."""

    _bits = torch.tensor([1 << i for i in range(31)] + [-(1 << 31)], dtype=torch.int32)

    def __init__(self, matcher: Any, vocab_size: int):
        self._matcher = matcher
        self._vocab = vocab_size
        self._mask = torch.zeros((vocab_size + 31) // 32, dtype=torch.int32)

    def apply(self, logits: torch.Tensor) -> None:
        """Set the logits of the tokens the grammar forbids now to -inf, in place (a float row)."""
        mask = self._mask  # filled on the CPU, unpacked where the logits are
        self._matcher.unsafe_compute_mask_ptr(mask.data_ptr(), mask.numel() * 4)
        self._check()
        if logits.device != mask.device:
            mask = mask.to(logits.device)
        allowed = ((mask.unsqueeze(1) & self._bits.to(logits.device)) != 0).view(-1)
        width = min(logits.shape[-1], self._vocab)
        logits[:width].masked_fill_(~allowed[:width], float("-inf"))
        if logits.shape[-1] > width:  # the model's padding ids beyond the tokenizer's
            logits[width:] = float("-inf")

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise GrammarError(f"the output grammar refused token {token}: {self._matcher.get_error()[:200]}")

    @property
    def done(self) -> bool:
        """Nothing more can follow (the JSON is complete): the row finishes."""
        return bool(self._matcher.is_stopped())

    def _check(self) -> None:
        if self._matcher.is_error():
            raise GrammarError(f"the output grammar failed: {self._matcher.get_error()[:200]}")


class GrammarCache:
    """Compiles constraints for one tokenizer; keeps the last ``size`` distinct ones (thread-safe)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int], size: int = 128):
        self._hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos = list(eos_token_ids)
        self.size = size
        self._lock = threading.Lock()
        self._tokenizer: Any = None  # llguidance's, built on first use (~0.3 s)
        self._cache: OrderedDict[str, Grammar] = OrderedDict()
        self.compiled = 0  # how many compilations ran (cache misses)

    def get(self, constraint: Constraint) -> Grammar:
        """The compiled grammar; ``InvalidRequestError`` (400) if the schema cannot be compiled."""
        key = constraint.key
        with self._lock:
            grammar = self._cache.get(key)
            if grammar is not None:
                self._cache.move_to_end(key)
                return grammar
        grammar = self._compile(constraint)
        with self._lock:
            self._cache[key] = grammar
            self._cache.move_to_end(key)
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
            self.compiled += 1
        return grammar

    def _ll_tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                import llguidance.hf

                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer, n_vocab=self.vocab_size, eos_token=self._eos
                )
            return self._tokenizer

    def _compile(self, constraint: Constraint) -> Grammar:
        from llguidance import LLMatcher

        schema = constraint.schema if constraint.kind == "json_schema" else _ANY_OBJECT
        try:
            source = LLMatcher.grammar_from_json_schema(
                json.dumps(schema or _ANY_OBJECT), defaults=_JSON_OPTIONS
            )
        except ValueError as exc:
            raise _refused(str(exc)) from None
        matcher = LLMatcher(self._ll_tokenizer(), source, log_level=0)
        if matcher.is_error():
            raise _refused(matcher.get_error())
        row = RowGrammar(matcher, self.vocab_size)  # warm the lexer: every copy shares what it builds
        try:
            row.apply(torch.zeros(self.vocab_size))
        except GrammarError as exc:
            raise _refused(str(exc)) from None
        return Grammar(matcher, self.vocab_size)


def _refused(reason: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"This JSON schema cannot be used for constrained decoding: {reason[:300]}", param="response_format"
    )
