"""The L1 template file format (``prompts/README.md``): :class:`Template` and its validation."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

CotMode = Literal["off", "visible", "hidden"]
COT_MODES: tuple[str, ...] = get_args(CotMode)
KEYS = ("version", "system", "few_shot", "cot")

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # safe in an HTTP header


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


def parse_template(name: str, data: Any) -> Template:
    """The template in a file's parsed YAML; ValueError says what is wrong."""
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
