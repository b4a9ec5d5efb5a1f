"""What one render of an L1 template may spend: the budget, and the checks made before each operation.

A render (:mod:`service.prompt_sandbox`) holds a :class:`Budget` in a context variable. Python
threads cannot be killed, so its limits are cooperative: loop iterations, calls, filters and
operators ``tick`` it (a step cap and a deadline), and anything that could build a large value or
run long inside one C call (a string repeated, padded or replaced, a huge number, a container
turned into text, compared or sorted) is checked BEFORE it runs. Then no single operation between
two ticks takes long, and a render stops soon after its deadline. What an operation builds is
charged to the render's allocation budget, so that a render's memory is bounded too.
"""

from __future__ import annotations

import re
import time
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from jinja2.exceptions import SecurityError
from jinja2.runtime import Undefined
from jinja2.utils import Namespace

T = TypeVar("T")

MAX_STEPS = 200_000  # loop iterations, calls, filters, operators (and items walked) per render
MAX_ITEMS = 100_000  # the longest list one operation may build (Jinja's own cap on range)
MAX_INT_BITS = 8_192  # a larger number takes long to build, print or compare
MAX_DEPTH = 32  # nesting of a value kept in a namespace or turned into text
MAX_ROUND_DIGITS = 100  # |round(n) computes 10**n
STRING_FACTOR = 2  # a single string: twice the longest prompt (intermediate text, whitespace)
ALLOC_FACTOR = 32  # all that one render builds: 32 prompts' worth

_SCALARS = (str, int, float, type(None))
_CONTAINERS = (list, tuple, set, frozenset, KeysView, ValuesView, ItemsView)


class RenderLimitError(Exception):
    """A render went over one of its limits: time, steps or size."""


@dataclass(slots=True)
class Budget:
    deadline: float  # time.monotonic()
    steps: int
    alloc: int  # characters (or items) the render may still build
    max_str: int  # the longest string one operation may build

    @classmethod
    def for_render(cls, timeout: float, max_chars: int) -> Budget:
        return cls(time.monotonic() + timeout, MAX_STEPS, ALLOC_FACTOR * max_chars, STRING_FACTOR * max_chars)

    def tick(self, steps: int = 1) -> None:
        self.steps -= steps
        if self.steps < 0:
            raise RenderLimitError(f"more than {MAX_STEPS:,} steps (loop iterations, calls, operations)")
        if time.monotonic() > self.deadline:
            raise RenderLimitError("the time limit ran out")

    def fits(self, size: int, what: str) -> None:
        """Refuse, before building it, a string of ``size`` characters over the limit."""
        if size > self.max_str:
            raise RenderLimitError(f"{what} would be {size:,} characters long (at most {self.max_str:,})")

    def fits_items(self, count: int, what: str) -> None:
        if count > MAX_ITEMS:
            raise RenderLimitError(f"{what} would have {count:,} items (at most {MAX_ITEMS:,})")

    def charge(self, value: T) -> T:
        """Count what an operation built against the limits; returns it."""
        if isinstance(value, str):
            size = len(value)
            self.fits(size, "a string")
        elif isinstance(value, list | tuple | dict):
            size = len(value)
            self.fits_items(size, "a collection")
        else:
            return value
        self.alloc -= size
        if self.alloc < 0:
            raise RenderLimitError("the template builds too much text in all")
        return value


_BUDGET: ContextVar[Budget | None] = ContextVar("loragate_template_budget", default=None)


@contextmanager
def rendering(timeout: float, max_chars: int) -> Iterator[Budget]:
    """The budget of one render, for the code that runs in it (this thread or task)."""
    limits = Budget.for_render(timeout, max_chars)
    token = _BUDGET.set(limits)
    try:
        yield limits
    finally:
        _BUDGET.reset(token)


def budget() -> Budget:
    current = _BUDGET.get()
    if current is None:  # e.g. Jinja folding a constant at compile time: evaluated when rendering instead
        raise RenderLimitError("template code runs only inside a bounded render")
    return current


def scalar(value: Any) -> bool:
    """A value whose text, comparison and hash cost at most its own length."""
    return isinstance(value, _SCALARS) and not (isinstance(value, int) and value.bit_length() > MAX_INT_BITS)


def weight(value: Any, limits: Budget) -> int:
    """About how long ``str(value)`` would be; stops counting past ``limits.max_str``.

    Also an upper bound on the work of comparing, sorting or hashing the value. Each item
    walked is a step.
    """
    total, stack = 0, [(value, 0)]
    while stack and total <= limits.max_str:
        item, depth = stack.pop()
        limits.tick()  # a shared value (a DAG) can have far more paths than items
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, (Mapping, Namespace, *_CONTAINERS)):
            if depth >= MAX_DEPTH:
                raise RenderLimitError(f"a value is nested more than {MAX_DEPTH} deep")
            if isinstance(item, Namespace):
                item = object.__getattribute__(item, "_Namespace__attrs")
            children = [*item.keys(), *item.values()] if isinstance(item, Mapping) else item
            stack.extend((child, depth + 1) for child in children)
            total += depth + 2
        else:  # numbers, None, macros, cyclers, loops, generators: short texts
            total += 32
    return total


def check_weight(value: Any, what: str) -> None:
    if not scalar(value):
        limits = budget()
        limits.fits(weight(value, limits), what)


def to_text(value: Any) -> str:
    """``str(value)``, refused before it starts when the text would be too long."""
    if isinstance(value, str):
        return value
    if isinstance(value, Undefined | bool | float | type(None)):
        return str(value)  # an undefined value raises its error here
    limits = budget()
    if isinstance(value, int):
        check_int(value.bit_length())
        return str(value)
    limits.fits(weight(value, limits), "the text of a value")
    return limits.charge(str(value))


def check_int(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise RenderLimitError(f"a number of more than {MAX_INT_BITS:,} bits")


def check_binop(limits: Budget, operator: str, left: Any, right: Any) -> None:
    """``*``, ``**``, ``+`` and ``%`` (the operators that can build large values)."""
    if operator == "*":
        _check_repeat(limits, left, right)
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            check_int(left.bit_length() * right)
    elif operator == "+":
        if isinstance(left, str) and isinstance(right, str):
            limits.fits(len(left) + len(right), "a joined string")
        elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
            limits.fits_items(len(left) + len(right), "a joined list")
    elif operator == "%" and isinstance(left, str):
        check_percent(limits, left, right)


def _check_repeat(limits: Budget, left: Any, right: Any) -> None:
    count, item = (right, left) if isinstance(right, int) else (left, right)
    if isinstance(item, str) and isinstance(count, int):
        limits.fits(len(item) * count, "a repeated string")
    elif isinstance(item, list | tuple) and isinstance(count, int):
        limits.fits_items(len(item) * count, "a repeated list")
    elif isinstance(left, int) and isinstance(right, int):
        check_int(left.bit_length() + right.bit_length())


_PERCENT = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.)", re.S)
_DIGITS = re.compile(r"\d+")


def _text_size(value: Any, limits: Budget) -> int:
    if isinstance(value, float):
        return 330  # '%f' % 1e308
    return len(value) if isinstance(value, str) else weight(value, limits)


def check_percent(limits: Budget, template: str, args: Any) -> None:
    """``template % args``: refuse widths over the limit and a result that would be too long."""
    positional = args if isinstance(args, tuple) else (args,)
    mapping = args if isinstance(args, Mapping) else {}
    total, position, specs = len(template), 0, 0
    for match in _PERCENT.finditer(template):
        key, width, precision, conversion = match.groups()
        specs += 1
        if conversion == "%":
            continue
        size = 0
        for part in (width, precision):
            if part == "*":
                star = positional[position] if position < len(positional) else 0
                position += 1
                size = max(size, star if isinstance(star, int) else 0)
            elif part:
                size = max(size, int(part))
        if key is None:
            value = positional[position] if position < len(positional) else None
            position += 1
        else:
            value = mapping.get(key)
        total += size + _text_size(value, limits)
        limits.fits(total, "a %-formatted string")
    limits.tick(specs)


def check_format_spec(limits: Budget, spec: str) -> None:
    """``format(value, spec)``: no width or precision over the limit (``{:>100000000}``)."""
    for digits in _DIGITS.findall(spec):
        limits.fits(int(digits), "a formatted field")


def check_replace(limits: Budget, text: Any, old: Any, new: Any, count: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        hits = text.count(old) if old else len(text) + 1
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        limits.fits(len(text) + hits * (len(new) - len(old)), "a replaced string")


def check_round(precision: Any) -> None:
    if isinstance(precision, int) and abs(precision) > MAX_ROUND_DIGITS:
        raise RenderLimitError(f"rounding to {precision} digits (at most {MAX_ROUND_DIGITS})")


def check_depth(value: Any) -> None:
    """Refuse to keep a deeply nested value: hashing one recurses in C (a crash, not an error)."""
    limits, stack = budget(), [(value, 0)]
    while stack:
        item, depth = stack.pop()
        limits.tick()
        if depth > MAX_DEPTH:
            raise RenderLimitError(f"a value is nested more than {MAX_DEPTH} deep")
        children = item.values() if isinstance(item, Mapping) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (Mapping, *_CONTAINERS)))


class BoundedNamespace(Namespace):
    """``namespace()``, the one mutable object of the sandbox: it keeps no deeply nested value."""

    def __setitem__(self, name: str, value: Any) -> None:
        if isinstance(value, (Mapping, *_CONTAINERS)):
            check_depth(value)
        super().__setitem__(name, value)


# -- calls of methods of Python's own types --------------------------------------------------
_TEXT_METHODS = frozenset(
    "capitalize casefold count endswith find index isalnum isalpha isascii isdecimal isdigit "
    "isidentifier islower isnumeric isprintable isspace istitle isupper lower lstrip partition "
    "removeprefix removesuffix rfind rindex rpartition rsplit rstrip split splitlines startswith "
    "strip swapcase title upper striptags unescape center ljust rjust zfill expandtabs replace join".split()
)
_VALUE_METHODS = frozenset("count index copy get keys values items bit_length is_integer".split())


def checked_method_args(
    limits: Budget, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """The arguments to call ``func`` with, once its size checks pass.

    Methods of Python's own types (``str``, ``list``, ``dict``, ``int``...) are allowed only from a
    list: ``int.to_bytes(10**9)``, ``str.translate`` or ``str.encode`` have no use in a prompt.
    """
    owner = getattr(func, "__self__", None)
    if owner is None or not (isinstance(owner, str) or type(owner).__module__ == "builtins"):
        return args
    name = getattr(func, "__name__", "")
    allowed = _TEXT_METHODS if isinstance(owner, str) else _VALUE_METHODS
    if name not in allowed or isinstance(owner, type):
        raise SecurityError(f"{type(owner).__name__}.{name}() is not allowed in a template")
    if name == "join" and isinstance(owner, str) and args:
        return (_joinable(limits, owner, args[0]),)
    for arg in (*args, *kwargs.values()):  # compared or put in an error message
        check_weight(arg, "an argument")
    if isinstance(owner, str):
        _check_text_method(limits, owner, name, args, kwargs)
    elif name in ("index", "count"):
        check_weight(owner, "a searched list")
    return args


def _check_text_method(
    limits: Budget, text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        limits.fits(args[0], f"the text of str.{name}()")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            limits.fits(len(text) + text.count("\t") * size, "a string with tabs expanded")
    elif name == "replace" and len(args) >= 2:
        check_replace(limits, text, args[0], args[1], args[2] if len(args) > 2 else -1)


def _joinable(limits: Budget, separator: str, items: Any) -> list[str]:
    parts, total = [], 0
    for item in items:
        limits.tick()
        if not isinstance(item, str):
            raise TypeError("str.join() takes text only; use the join filter")
        total += len(item) + len(separator)
        limits.fits(total, "a joined string")
        parts.append(item)
    return parts
