"""L1 templates: a department's system prompt, few-shot examples and chain-of-thought mode.

A template is a YAML file under the prompts folder, named by its path without ``.yaml``
(``prompts/acme/it.yaml`` is ``acme/it``); ``prompts/README.md`` describes the format.

Rendering order (what the model receives when a template applies):

1. One system message, its parts joined by a blank line:
   a. the template's system prompt, rendered with the variables;
   b. the chain-of-thought instruction, when ``cot`` is ``visible`` or ``hidden``;
   c. the client's own leading ``system``/``developer`` messages, in their order.
   This message is always sent, even when empty, so that the model's chat template never adds
   a default system prompt of its own (SmolLM2's does when the first message is not ``system``).
2. The few-shot pairs, as ``user``/``assistant`` messages, in file order.
3. The rest of the client's conversation, unchanged (a system message after the first
   user/assistant message stays where the client put it).

Variables: ``tenant`` and ``department`` (given by the caller), ``date`` (today's ISO date,
unless given) and the department's values from the tenants file, all strings. The system
prompt is rendered in a bounded Jinja2 sandbox (:mod:`service.prompt_sandbox`, built on
``ImmutableSandboxedEnvironment``) with ``StrictUndefined`` and no loader: an unknown variable is
an error, not an empty string; ``{% include %}``, ``{% import %}`` and ``{% extends %}`` are
refused at load, and so is any ``_``-prefixed attribute or item that can be seen without
rendering; what only rendering reveals (a computed ``|attr(name)``) is stopped by the sandbox.
A render has limits (:mod:`service.prompt_limits`): ``render_timeout`` seconds and a step cap,
no single operation building more than twice ``max_chars`` characters, and at most
``max_chars`` characters of system prompt; past one of them the render fails.

Hot reload: the file is stat-ed on every use and read again when its signature (mtime, size and
inode, :func:`service.reloading.signature`) changed. A file that cannot be loaded (YAML, schema,
Jinja syntax, forbidden construct) is refused with a logged error, once per version of the file,
and the last good version keeps serving; with no good version yet, ``get`` raises
:class:`TemplateError`. Loads, refusals and failed renders are also reported to the store's
:class:`TemplateEvents` (the gateway's metrics).

Serving (:meth:`TemplateStore.resolve`, what the gateway awaits for each request): the event loop
only stats the file and looks up caches; reading, compiling and rendering run on the store's
own threads. The system prompt depends only on the template version, the variables and the
date, so it is rendered once per (version, variables, date) and cached (LRU, ``CACHE_SIZE``);
concurrent first requests wait for the same render, and later ones render nothing. A ``random``
filter therefore gives the same text for as long as its cache entry lives. A new version serves
once it rendered with the department's own variables (the trial render). A version that does
not render (an error, the time or size limit) is logged and counted once per (version,
variables, date), and the last version that rendered for those variables keeps serving, also
when that failure comes later (a new date); with none, ``resolve`` raises
:class:`TemplateRenderError`. The blocking ``get`` and ``render`` are for tools and tests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import jinja2
import yaml

from . import prompt_sandbox
from .domain import ChatMessage
from .prompt_schema import COT_MODES as COT_MODES  # re-exported
from .prompt_schema import KEYS as KEYS  # re-exported
from .prompt_schema import CotMode as CotMode  # re-exported
from .prompt_schema import Template as Template  # re-exported
from .prompt_schema import parse_template
from .reasoning import COT_INSTRUCTION
from .reloading import Signature, signature

log = logging.getLogger(__name__)

SYSTEM_ROLES = frozenset({"system", "developer"})
CACHE_SIZE = 256  # rendered system prompts kept: (version, variables, date)
COMPILED_SIZE = 64  # compiled system prompts kept, by source
SERVED_SIZE = 1024  # departments (template, variables) whose last good render is kept
RENDER_THREADS = 2  # renders in parallel at most; they hold the GIL anyway
MAX_FILE_BYTES = 1 << 20

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:/[A-Za-z0-9][A-Za-z0-9_-]*)*")
R = TypeVar("R")


class TemplateError(Exception):
    """A template that cannot be loaded or rendered; the message names its file."""


class TemplateRenderError(TemplateError):
    """A template that loaded but does not render (with these variables), and none that did."""


class TemplateEvents(Protocol):
    def template_loaded(self, name: str) -> None: ...

    def template_failed(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Rendered:
    """A template version with its system prompt rendered for one department: what serves."""

    template: Template
    system: str  # "" without a system prompt

    def messages(self, conversation: Sequence[ChatMessage]) -> list[ChatMessage]:
        """The messages for the engine, in the order documented at the top of this module."""
        parts = [self.system] if self.system else []
        if self.template.cot != "off":
            parts.append(COT_INSTRUCTION)
        leading = 0
        while leading < len(conversation) and conversation[leading].role in SYSTEM_ROLES:
            leading += 1
        parts.extend(m.content for m in conversation[:leading] if m.content.strip())
        rendered = [ChatMessage("system", "\n\n".join(parts))]
        for user, assistant in self.template.few_shot:
            rendered += [ChatMessage("user", user), ChatMessage("assistant", assistant)]
        rendered.extend(conversation[leading:])
        return rendered


@dataclass(frozen=True, slots=True)
class _Entry:
    """One template file as last read.

    Not a :class:`service.reloading.FileWatch`: entries are made per name on first use, the stat
    runs on the event loop while the read runs on the store's threads (concurrent requests share
    one read), and a refused version keeps its error, raised while there is no good version.
    """

    signature: Signature | None  # of the file last read; None: missing
    good: Template | None  # the latest version that loaded
    error: str | None  # why the file at `signature` was refused


Frozen = tuple[tuple[str, str], ...]
_Key = tuple[Template, Frozen]  # a render: the version and the values (date included)


class TemplateStore:
    """Templates under ``root``, loaded on first use and reloaded when their file changes."""

    def __init__(
        self,
        root: Path,
        events: TemplateEvents | None = None,
        *,
        render_timeout: float = 1.0,
        max_chars: int = 32_768,
    ):
        self.root = Path(root)
        self.events = events
        self.render_timeout = render_timeout
        self.max_chars = max_chars
        self.renders = 0  # system prompts rendered (cache misses included, hits not)
        self._env = prompt_sandbox.BoundedEnvironment()
        self._lock = threading.Lock()  # held only to read or update the dicts below
        self._entries: dict[str, _Entry] = {}
        self._files: dict[str, tuple[Path, str]] = {}  # name -> its file, and the str the hot path stats
        self._compiled: OrderedDict[str, jinja2.Template] = OrderedDict()
        self._texts: OrderedDict[_Key, Rendered | str] = OrderedDict()  # str: why it did not render
        self._served: OrderedDict[tuple[str, Frozen], Rendered] = OrderedDict()
        self._pending: dict[Hashable, asyncio.Future[Any]] = {}  # work on the threads, by key
        self._pool: ThreadPoolExecutor | None = None

    def path(self, name: str) -> Path:
        if not _NAME.fullmatch(name):
            raise TemplateError(f"invalid template name {name!r}: use folder/name, letters, digits, _ and -")
        return self.root / f"{name}.yaml"

    def _file(self, name: str) -> tuple[Path, str]:
        """``name``'s file, and its path as a str: made once per name (building them costs more than a stat).

        The names served come from the tenants file's departments, so this stays as small as that file.
        """
        file = self._files.get(name)
        if file is None:  # an invalid name raises here, every time, and is not kept
            path = self.path(name)
            file = self._files[name] = (path, str(path))
        return file

    # -- blocking API: file reads and Jinja in the calling thread ----------------------------
    def get(self, name: str) -> Template:
        path, file = self._file(name)
        entry = self._refresh(name, path, signature(file))
        if entry.good is None:
            raise TemplateError(entry.error)
        return entry.good

    def render(
        self, template: Template, messages: Sequence[ChatMessage], variables: Mapping[str, str]
    ) -> list[ChatMessage]:
        """The messages for the engine; a template that does not render raises :class:`TemplateError`."""
        values = _values(variables)
        key = (template, _freeze(values))
        with self._lock:
            cached = self._texts.get(key)
        if not isinstance(cached, Rendered):
            cached = Rendered(template, self._render_text(template, values))
            self._remember(key, cached)
        return cached.messages(messages)

    # -- serving: nothing that blocks on the event loop --------------------------------------
    async def resolve(self, name: str, variables: Mapping[str, str]) -> Rendered:
        """What serves ``name`` for a department with these variables (see the module's doc)."""
        template = await self._latest(name)
        values = _values(variables)
        rendered = await self._rendered(template, values)
        department = (name, _freeze(variables))
        if rendered is None:
            rendered = await self._fallback(department, template, values)
        with self._lock:
            _put(self._served, department, rendered, SERVED_SIZE)
        return rendered

    async def _latest(self, name: str) -> Template:
        path, file = self._file(name)
        now = signature(file)  # a stat: cheap enough for the loop
        entry = self._entries.get(name)
        if entry is None or entry.signature != now:
            entry = await self._off_loop(("load", name, now), None, self._refresh, name, path, now)
        if entry.good is None:
            raise TemplateError(entry.error)
        return entry.good

    async def _rendered(self, template: Template, values: Mapping[str, str]) -> Rendered | None:
        """``template`` rendered with ``values``, from the cache or a thread; None if it does not render."""
        if template.system is None:
            return Rendered(template, "")
        key = (template, _freeze(values))
        with self._lock:
            cached = self._texts.get(key)
        if cached is not None:
            return cached if isinstance(cached, Rendered) else None  # a failure was logged once
        backstop = 2 * self.render_timeout + 1.0  # the render stops itself well before
        try:
            return await self._off_loop(key, backstop, self._attempt, template, values, key)
        except TimeoutError:  # only if an operation escaped the render's own limits
            log.error("template %s: a render ran past %.1f s; not waiting for it", template.ref, backstop)
            self._remember(key, "the render ran past its time limit")  # until it ends after all
            return None

    async def _fallback(
        self, department: tuple[str, Frozen], failed: Template, values: Mapping[str, str]
    ) -> Rendered:
        with self._lock:
            last = self._served.get(department)
        if last is None:
            raise TemplateRenderError(
                f"{failed.ref} does not render for this department, and no earlier version did"
            )
        if last.template != failed:  # the version that served, with today's values
            again = await self._rendered(last.template, values)
            if again is not None:
                return again
        return last  # as it rendered last time (another date)

    async def _off_loop(self, key: Hashable, backstop: float | None, work: Callable[..., R], *args: Any) -> R:
        """``work(*args)`` on the store's threads; callers with the same key share one run.

        TimeoutError after ``backstop`` seconds (None: no limit); the work goes on regardless.
        """
        loop = asyncio.get_running_loop()
        future = self._pending.get(key)
        if future is None or future.get_loop() is not loop:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="loragate-templates")
            future = loop.run_in_executor(self._pool, work, *args)
            self._pending[key] = future
            future.add_done_callback(
                lambda done: self._pending.pop(key) if self._pending.get(key) is done else None
            )
        return await asyncio.wait_for(asyncio.shield(future), backstop)  # shared: never cancelled

    def _attempt(self, template: Template, values: Mapping[str, str], key: _Key) -> Rendered | None:
        """The trial render of a version for one department (on a thread): logged once if it fails."""
        try:
            rendered = Rendered(template, self._render_text(template, values))
        except TemplateError as exc:
            log.error("template %s cannot serve these variables: %s", template.ref, exc)
            self._remember(key, str(exc))
            return None
        self._remember(key, rendered)
        return rendered

    def _remember(self, key: _Key, result: Rendered | str) -> None:
        with self._lock:
            _put(self._texts, key, result, CACHE_SIZE)

    # -- loading -----------------------------------------------------------------------------
    def _refresh(self, name: str, path: Path, signature: Signature | None) -> _Entry:
        with self._lock:
            entry = self._entries.get(name)
        if entry is not None and entry.signature == signature:
            return entry
        entry = self._reload(name, path, signature, entry.good if entry else None)
        with self._lock:
            self._entries[name] = entry
        return entry

    def _reload(
        self, name: str, path: Path, signature: Signature | None, previous: Template | None
    ) -> _Entry:
        try:
            if signature is None:
                raise TemplateError(f"{path}: no such template file")
            if signature[1] > MAX_FILE_BYTES:
                raise TemplateError(f"{path}: larger than {MAX_FILE_BYTES:,} bytes")
            template = self._load(name, path)
        except TemplateError as exc:
            if previous is not None:
                log.error("refused template %s: %s; still serving %s", name, exc, previous.ref)
            else:
                log.error("refused template %s: %s", name, exc)
            if self.events is not None:
                self.events.template_failed(name)
            return _Entry(signature, previous, str(exc))
        log.info("loaded template %s from %s", template.ref, path)
        if self.events is not None:
            self.events.template_loaded(name)
        return _Entry(signature, template, None)

    def _load(self, name: str, path: Path) -> Template:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"{path}: cannot read: {exc}") from exc
        except yaml.YAMLError as exc:
            raise TemplateError(f"{path}: invalid YAML: {exc}") from exc
        except Exception as exc:  # a bad date (version: 2026-13-45), deep nesting...
            raise TemplateError(f"{path}: invalid YAML: {type(exc).__name__}: {_short(exc)}") from exc
        try:
            template = parse_template(name, data)
        except ValueError as exc:
            raise TemplateError(f"{path}: {exc}") from exc
        if template.system is not None:
            self._compiled_for(template)
        return template

    def _compiled_for(self, template: Template) -> jinja2.Template:
        source = cast(str, template.system)
        with self._lock:
            compiled = self._compiled.get(source)
        if compiled is None:  # new, evicted, or a Template built elsewhere: checked the same way
            compiled = self._compile(source, self.path(template.name))
            with self._lock:
                _put(self._compiled, source, compiled, COMPILED_SIZE)
        return compiled

    def _compile(self, source: str, path: Path) -> jinja2.Template:
        try:
            return self._env.compile_prompt(source, self.max_chars)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{path}: Jinja syntax error at line {exc.lineno}: {exc.message}") from exc
        except ValueError as exc:
            raise TemplateError(f"{path}: {exc}") from exc
        except Exception as exc:  # e.g. RecursionError: nested too deep for the parser
            raise TemplateError(f"{path}: cannot compile: {type(exc).__name__}: {_short(exc)}") from exc

    def _render_text(self, template: Template, values: Mapping[str, str]) -> str:
        if template.system is None:
            return ""
        compiled = self._compiled_for(template)
        with self._lock:
            self.renders += 1
        try:
            return prompt_sandbox.render(
                compiled, values, timeout=self.render_timeout, max_chars=self.max_chars
            )
        except Exception as exc:  # a template author's code: anything may go wrong
            if self.events is not None:
                self.events.template_failed(template.name)
            raise TemplateRenderError(
                f"{self.path(template.name)}: cannot render the system prompt of {template.ref}: "
                f"{type(exc).__name__}: {_short(exc)} (variables: {', '.join(sorted(values))})"
            ) from exc


def _today() -> str:
    return dt.date.today().isoformat()


def _values(variables: Mapping[str, str]) -> dict[str, str]:
    return {"date": _today(), **variables}


def _freeze(values: Mapping[str, str]) -> Frozen:
    return tuple(sorted(values.items()))


def _put(cache: OrderedDict[Any, Any], key: Any, value: Any, size: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."
