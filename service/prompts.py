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
prompt is rendered in Jinja2's ``ImmutableSandboxedEnvironment`` with ``StrictUndefined`` and no
loader: an unknown variable is an error, not an empty string; ``{% include %}``, ``{% import %}``
and ``{% extends %}`` are refused at load, and so is any ``_``-prefixed attribute or item that
can be seen without rendering; what only rendering reveals (a computed ``|attr(name)``) is
stopped by the sandbox when rendering.

Hot reload: ``get`` stats the file on every call and reads it again when its mtime or size
changed. A file that cannot be loaded (YAML, schema, Jinja syntax, forbidden construct) is
refused with a logged error, once per version of the file, and the last good version keeps
serving; with no good version yet, ``get`` raises :class:`TemplateError`. Loads, refusals and
failed renders are also reported to the store's :class:`TemplateEvents` (the gateway's metrics).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, cast, get_args

import jinja2
import yaml
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .engines.base import ChatMessage
from .reasoning import COT_INSTRUCTION

log = logging.getLogger(__name__)

CotMode = Literal["off", "visible", "hidden"]
COT_MODES: tuple[str, ...] = get_args(CotMode)
SYSTEM_ROLES = frozenset({"system", "developer"})
KEYS = ("version", "system", "few_shot", "cot")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:/[A-Za-z0-9][A-Za-z0-9_-]*)*")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # safe in an HTTP header
_FORBIDDEN_TAGS: dict[type[nodes.Node], str] = {
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
    nodes.Extends: "extends",
}


class TemplateError(Exception):
    """A template that cannot be loaded or rendered; the message names its file."""


class TemplateEvents(Protocol):
    def template_loaded(self, name: str) -> None: ...

    def template_failed(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Template:
    name: str  # "acme/it" is prompts/acme/it.yaml
    version: str
    system: str | None  # Jinja2 source
    few_shot: tuple[tuple[str, str], ...]  # (user, assistant) pairs
    cot: CotMode

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class _Entry:
    signature: tuple[int, int] | None  # (mtime_ns, size) of the file last read; None: missing
    good: Template | None  # the version that serves
    error: str | None  # why the file at `signature` was refused


class TemplateStore:
    """Templates under ``root``, loaded on first use and reloaded when their file changes."""

    def __init__(self, root: Path, events: TemplateEvents | None = None):
        self.root = Path(root)
        self.events = events
        self._env = ImmutableSandboxedEnvironment(
            undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True
        )
        self._entries: dict[str, _Entry] = {}
        self._compiled: dict[str, jinja2.Template] = {}  # system source -> compiled template
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        if not _NAME.fullmatch(name):
            raise TemplateError(f"invalid template name {name!r}: use folder/name, letters, digits, _ and -")
        return self.root / f"{name}.yaml"

    def get(self, name: str) -> Template:
        path = self.path(name)
        try:
            stat = path.stat()
            signature: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            signature = None
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry.signature != signature:
                entry = self._reload(name, path, signature, entry.good if entry else None)
                self._entries[name] = entry
        if entry.good is None:
            raise TemplateError(entry.error)
        return entry.good

    def render(
        self, template: Template, messages: Sequence[ChatMessage], variables: Mapping[str, str]
    ) -> list[ChatMessage]:
        """The messages for the engine, in the order documented at the top of this module."""
        parts: list[str] = []
        if template.system is not None:
            text = self._render_system(template, {"date": dt.date.today().isoformat(), **variables})
            if text:
                parts.append(text)
        if template.cot != "off":
            parts.append(COT_INSTRUCTION)
        leading = 0
        while leading < len(messages) and messages[leading].role in SYSTEM_ROLES:
            leading += 1
        parts.extend(m.content for m in messages[:leading] if m.content.strip())
        rendered = [ChatMessage("system", "\n\n".join(parts))]
        for user, assistant in template.few_shot:
            rendered += [ChatMessage("user", user), ChatMessage("assistant", assistant)]
        rendered.extend(messages[leading:])
        return rendered

    # -- loading -----------------------------------------------------------------
    def _reload(
        self, name: str, path: Path, signature: tuple[int, int] | None, previous: Template | None
    ) -> _Entry:
        try:
            if signature is None:
                raise TemplateError(f"{path}: no such template file")
            template = self._load(name, path)
        except TemplateError as exc:
            if previous is not None:
                log.error("refused template %s: %s; still serving %s", name, exc, previous.ref)
            else:
                log.error("refused template %s: %s", name, exc)
            if self.events is not None:
                self.events.template_failed(name)
            return _Entry(signature, previous, str(exc))
        if previous is not None and previous.system != template.system:
            self._compiled.pop(previous.system or "", None)
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
        try:
            template = _parse(name, data)
        except ValueError as exc:
            raise TemplateError(f"{path}: {exc}") from exc
        if template.system is not None:
            self._compiled[template.system] = self._compile(template.system, path)
        return template

    def _compile(self, source: str, path: Path) -> jinja2.Template:
        try:
            tree = self._env.parse(source)
            _check_constructs(tree)
            return self._env.from_string(tree)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{path}: Jinja syntax error at line {exc.lineno}: {exc.message}") from exc
        except ValueError as exc:
            raise TemplateError(f"{path}: {exc}") from exc

    def _render_system(self, template: Template, values: Mapping[str, str]) -> str:
        assert template.system is not None
        path = self.path(template.name)
        compiled = self._compiled.get(template.system)
        if compiled is None:  # a Template built elsewhere, or replaced since: check it the same way
            compiled = self._compile(template.system, path)
        try:
            return compiled.render(values).strip()
        except Exception as exc:  # a template author's code: anything may go wrong
            if self.events is not None:
                self.events.template_failed(template.name)
            raise TemplateError(
                f"{path}: cannot render the system prompt of {template.ref}: {type(exc).__name__}: {exc} "
                f"(variables: {', '.join(sorted(values))})"
            ) from exc


# -- validation ----------------------------------------------------------------------
def _parse(name: str, data: Any) -> Template:
    if not isinstance(data, dict):
        raise ValueError("expected a mapping with at least `version:`")
    unknown = sorted(str(key) for key in data if key not in KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(KEYS)}")
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError("`system:` must be text")
    return Template(
        name=name,
        version=_version(data.get("version")),
        system=system,
        few_shot=_few_shot(data.get("few_shot")),
        cot=_cot(data.get("cot")),
    )


def _version(value: Any) -> str:
    if value is None:
        raise ValueError('`version:` is required, e.g. version: "1.0.0"')
    if isinstance(value, bool | float):  # YAML turned it into a number: 1.10 would read as 1.1
        raise ValueError(f'`version: {value}` reads as a number; write it in quotes, e.g. version: "1.0"')
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = value.isoformat()
    elif isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not _VERSION.fullmatch(value):
        raise ValueError(f"`version:` must be letters, digits and . _ + - (got {value!r})")
    return value


def _cot(value: Any) -> CotMode:
    if value is None or value is False:  # YAML reads a bare `off` as false
        return "off"
    if isinstance(value, str) and value in COT_MODES:
        return cast(CotMode, value)
    raise ValueError(f"`cot:` must be one of {', '.join(COT_MODES)} (got {value!r})")


def _few_shot(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("`few_shot:` must be a list of {user: ..., assistant: ...} pairs")
    pairs = []
    for number, item in enumerate(value, 1):
        if not isinstance(item, dict) or set(item) != {"user", "assistant"}:
            raise ValueError(f"few_shot item {number} must have exactly the keys `user` and `assistant`")
        user, assistant = item["user"], item["assistant"]
        if not (isinstance(user, str) and isinstance(assistant, str) and user.strip() and assistant.strip()):
            raise ValueError(f"few_shot item {number}: `user` and `assistant` must be non-empty text")
        pairs.append((user.strip(), assistant.strip()))
    return tuple(pairs)


def _check_constructs(tree: nodes.Template) -> None:
    """Refuse what a sandboxed prompt has no use for: file access and private attributes."""
    for node in tree.find_all(tuple(_FORBIDDEN_TAGS)):
        tag = _FORBIDDEN_TAGS[type(node)]
        raise ValueError(f"system prompt, line {node.lineno}: {{% {tag} %}} is not allowed (no file access)")
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            attr: object = node.attr
        elif isinstance(node, nodes.Getitem):
            attr = node.arg.value if isinstance(node.arg, nodes.Const) else None
        else:
            first = node.args[0] if node.name == "attr" and node.args else None
            attr = first.value if isinstance(first, nodes.Const) else None
        if isinstance(attr, str) and attr.startswith("_"):
            raise ValueError(f"system prompt, line {node.lineno}: access to {attr!r} is not allowed")
