"""Grammar-constrained decoding with llguidance: JSON (any object, or a JSON schema) per row.

Why llguidance: measured on SmolLM2's tokenizer it compiles a tool-call schema in ~1 ms, fills
a row's token mask in ~10 us, handles recursive JSON (``json_object``) natively and has no
dependencies (docs/structured-output.md has the figures against xgrammar and outlines-core).

A compiled grammar is a warmed ``LLMatcher`` kept per ``Constraint.key`` (LRU); each row decodes
with its own copy, so the n choices of a request, and the rows of different requests, never
share state. Masks and token checks run on the worker.

Compiling is bounded, since one tenant's schema must not take the gateway with it. Most schemas
compile in milliseconds, but some that fit ``max_schema_bytes`` take minutes (a thousand
``patternProperties``: 12 minutes), and llguidance's parser limits do not bound that step. So a
schema's grammar is first built in a child process (``CompileProbe``) that is killed at
``COMPILE_SECONDS``, with its memory capped: a schema that does not finish there is refused
(400), and remembered as refused. Only a schema the child built goes into this process. Cache
misses compile on one thread of their own (``get_async``), never on the event loop nor on the
threads the rest of the gateway shares; a request waits for it at most ``COMPILE_WAIT_SECONDS``.
While decoding, llguidance's limits bound each mask's work and the lexer's memory; a grammar that hits
them fails its request with a 400 (``GrammarLimitError``), never the batch.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch

from ...domain import Constraint
from ...errors import EngineUnavailableError, InvalidRequestError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# Compact JSON, no free whitespace: a small model under a grammar that allows whitespace
# anywhere can spend its whole token budget on newlines.
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}
_ANY_OBJECT: dict[str, Any] = {"type": "object"}

COMPILE_SECONDS = 1.0  # a schema's grammar built in longer than this is refused (typical: 1-40 ms)
COMPILE_WAIT_SECONDS = 10.0  # a request waits this long at most for the compile thread (else 503)
PROBE_MEMORY_BYTES = 2 << 30
STARTUP_SECONDS = 30.0  # the compile child's start (~70 ms)  # the compile child's address space
REFUSED_KEPT = 256  # schemas remembered as refused, so a repeated one costs nothing
# llguidance's parser limits are its defaults but for the lexer's states: 250,000 of ~1-2 kB each
# would let one cached grammar grow to hundreds of MB. A mask costs at most ~15 ms of lexer and
# parser work (its step_lexer_fuel and step_max_items).
MAX_LEXER_STATES = 20_000

_PROBE = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
from llguidance import LLMatcher, LLParserLimits
limits = LLParserLimits(max_lexer_states={states})
sys.stdout.write('"ready"\\n')
sys.stdout.flush()
for line in sys.stdin:
    try:
        failed, messages = LLMatcher.validate_grammar_with_warnings(json.loads(line), None, limits=limits)
        answer = messages[0] if failed else ""
    except Exception as exc:
        answer = f"{{type(exc).__name__}}: {{exc}}"
    sys.stdout.write(json.dumps(answer) + "\\n")
    sys.stdout.flush()
"""


# llguidance's messages for its resource limits (lexer states and fuel, parser items, sizes)
_LIMIT_HIT = re.compile(r"too many|too big|too complex|fuel|max is|limit", re.IGNORECASE)


class GrammarError(RuntimeError):
    """A row's matcher refused a token or broke: that row's request fails, alone."""


class GrammarLimitError(GrammarError):
    """A row's grammar hit a resource limit computing a mask (``MAX_LEXER_STATES``, llguidance's
    fuel): the schema's fault (400)."""


class SchemaTooComplex(Exception):
    """The child process did not build the grammar within its time or memory."""


class Grammar:
    """One compiled constraint: a warmed matcher that rows copy.

    Copies share the lexer states the template and every row built: once a row hits the
    limit on them, every later copy would too, so the grammar is ``spent`` and the cache
    compiles it afresh for the next request.
    """

    def __init__(self, template: Any, vocab_size: int):
        self._template = template
        self.vocab_size = vocab_size
        self.spent = False

    def row(self) -> RowGrammar:
        return RowGrammar(self._template.deep_copy(), self.vocab_size, self)


class RowGrammar:
    """One row's matcher state: masks its logits, follows its tokens."""

    _bits = torch.tensor([1 << i for i in range(31)] + [-(1 << 31)], dtype=torch.int32)

    def __init__(self, matcher: Any, vocab_size: int, grammar: Grammar | None = None):
        self._matcher = matcher
        self._vocab = vocab_size
        self._grammar = grammar  # the compiled grammar this row copies (spent at a limit)
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
            raise self._failure(f"the output grammar refused token {token}")

    @property
    def done(self) -> bool:
        """Nothing more can follow (the JSON is complete): the row finishes."""
        return bool(self._matcher.is_stopped())

    def _check(self) -> None:
        if self._matcher.is_error():
            raise self._failure("the output grammar failed")

    def _failure(self, what: str) -> GrammarError:
        """A limit the grammar hit (the schema's doing), or a matcher that broke (ours)."""
        error = self._matcher.get_error()
        if not _LIMIT_HIT.search(error):
            return GrammarError(f"{what}: {error[:200]}")
        if self._grammar is not None:
            self._grammar.spent = True
        return GrammarLimitError(f"{what}: {error[:200]}")


class CompileProbe:
    """A child process that builds grammars first, killed when one takes more than ``seconds``.

    llguidance builds a grammar with the GIL released and cannot be interrupted; a thread that
    runs a pathological schema runs to its end. A process can be killed. The child imports
    llguidance only (no torch, ~70 ms to start), is started on first use and again after a kill.
    """

    def __init__(self, seconds: float = COMPILE_SECONDS, memory_bytes: int = PROBE_MEMORY_BYTES):
        self.seconds = seconds
        self._code = _PROBE.format(memory=int(memory_bytes), states=MAX_LEXER_STATES)
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None

    def check(self, grammar: str) -> str:
        """llguidance's error for ``grammar`` ("" if it builds); ``SchemaTooComplex`` past the limits."""
        with self._lock:
            child = self._start()
            assert child.stdin is not None and child.stdout is not None
            try:
                child.stdin.write(json.dumps(grammar).encode() + b"\n")
                child.stdin.flush()
                line = self._read_line(child.stdout.fileno(), time.monotonic() + self.seconds)
            except (OSError, SchemaTooComplex):
                self._kill()
                raise SchemaTooComplex from None
        return str(json.loads(line))

    def _start(self) -> subprocess.Popen[bytes]:
        """The child, started if it is not running; a child that cannot start is the server's fault."""
        if self._child is None or self._child.poll() is not None:
            self._child = child = subprocess.Popen(
                [sys.executable, "-c", self._code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert child.stdout is not None
            try:
                self._read_line(child.stdout.fileno(), time.monotonic() + STARTUP_SECONDS)
            except SchemaTooComplex:
                self._kill()
                raise RuntimeError("the grammar compile process did not start") from None
        return self._child

    @staticmethod
    def _read_line(fd: int, deadline: float) -> bytes:
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise SchemaTooComplex
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:  # the child died (its memory limit)
                    raise SchemaTooComplex
                data += chunk
        return data

    def _kill(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.kill()
            child.wait()
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    pipe.close()

    def close(self) -> None:
        with self._lock:
            self._kill()


class GrammarCache:
    """Compiles constraints for one tokenizer; keeps the last ``size`` distinct ones (thread-safe)."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        eos_token_ids: Sequence[int],
        size: int = 128,
        *,
        compile_seconds: float = COMPILE_SECONDS,
    ):
        self._hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos = list(eos_token_ids)
        self.size = size
        self._lock = threading.Lock()  # the dicts only: held for microseconds, also on the event loop
        self._tokenizer_lock = threading.Lock()
        self._tokenizer: Any = None  # llguidance's, built on first use (~0.3 s)
        self._cache: OrderedDict[str, Grammar] = OrderedDict()
        self._refused: OrderedDict[str, str] = OrderedDict()  # key -> why, for schemas refused before
        self._probe = CompileProbe(compile_seconds)
        self._compiler = ThreadPoolExecutor(1, thread_name_prefix="loragate-grammar")
        self.compiled = 0  # how many compilations ran (cache misses)

    def cached(self, constraint: Constraint) -> Grammar | None:
        """The compiled grammar if it is cached (cheap: callable on the event loop)."""
        key = constraint.key
        with self._lock:
            grammar = self._cache.get(key)
            if grammar is not None and grammar.spent:  # compiled afresh: its lexer is full
                del self._cache[key]
                return None
            if grammar is not None:
                self._cache.move_to_end(key)
            return grammar

    async def get_async(self, constraint: Constraint) -> Grammar:
        """``get`` for the event loop: a cache hit at once, a miss on the compile thread.

        One thread compiles: a slow schema takes one core at most, and the threads the gateway
        shares (tokenising, templates) never wait for it. A request that waits longer than
        ``COMPILE_WAIT_SECONDS`` for its turn gets 503 (its compile is dropped from the queue).
        """
        grammar = self.cached(constraint)
        if grammar is not None:
            return grammar
        future = asyncio.get_running_loop().run_in_executor(self._compiler, self.get, constraint)
        try:
            return await asyncio.wait_for(future, COMPILE_WAIT_SECONDS)
        except TimeoutError:
            raise EngineUnavailableError(
                "The server is busy compiling other JSON schemas; retry shortly."
            ) from None

    def get(self, constraint: Constraint) -> Grammar:
        """The compiled grammar; ``InvalidRequestError`` (400) if the schema cannot be compiled."""
        grammar = self.cached(constraint)
        if grammar is not None:
            return grammar
        key = constraint.key
        with self._lock:
            why = self._refused.get(key)
        if why is not None:
            raise InvalidRequestError(why, param="response_format")
        try:
            grammar = self._compile(constraint)
        except InvalidRequestError as exc:
            with self._lock:
                self._refused[key] = exc.message
                while len(self._refused) > REFUSED_KEPT:
                    self._refused.popitem(last=False)
            raise
        with self._lock:
            self._cache[key] = grammar
            self._cache.move_to_end(key)
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
            self.compiled += 1
        return grammar

    def close(self) -> None:
        self._compiler.shutdown(wait=False, cancel_futures=True)
        self._probe.close()

    def _ll_tokenizer(self) -> Any:
        with self._tokenizer_lock:
            if self._tokenizer is None:
                import llguidance.hf

                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer, n_vocab=self.vocab_size, eos_token=self._eos
                )
            return self._tokenizer

    def _compile(self, constraint: Constraint) -> Grammar:
        from llguidance import LLMatcher, LLParserLimits

        schema = constraint.schema if constraint.kind == "json_schema" else _ANY_OBJECT
        try:
            source = LLMatcher.grammar_from_json_schema(
                json.dumps(schema or _ANY_OBJECT), defaults=_JSON_OPTIONS
            )
        except ValueError as exc:
            raise _refused(str(exc)) from None
        if constraint.kind == "json_schema":  # json_object's grammar is fixed, and fast
            try:
                error = self._probe.check(source)
            except SchemaTooComplex:
                raise _refused(
                    f"its grammar takes longer than {self._probe.seconds:g} s (or too much memory) to build"
                ) from None
            if error:
                raise _refused(error)
        limits = LLParserLimits(max_lexer_states=MAX_LEXER_STATES)
        matcher = LLMatcher(self._ll_tokenizer(), source, log_level=0, limits=limits)
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
