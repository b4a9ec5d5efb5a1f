"""Jinja's filters and tests for the bounded sandbox (:mod:`service.prompt_sandbox`).

Each one ticks the render's budget, checks BEFORE it runs the arguments that set how much it
builds (``center(width)``, ``indent``, ``wordwrap``, ``replace``, ``format``, ``batch``, ``slice``,
``round``, ``tojson``...), turns a container into text only when that text is short, sorts or
compares only what is small, and charges what it built. All are ``pass_context``, so that the
compiler never runs one while folding constants at load. ``join`` and ``sum`` are rewritten:
``join`` counts as it goes, ``sum`` adds numbers only (adding lists is quadratic).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jinja2.filters import make_attrgetter, sync_do_join
from jinja2.runtime import Context, Undefined
from jinja2.utils import pass_context, pass_environment, pass_eval_context

from . import prompt_limits as limits_
from .prompt_limits import budget, check_weight, to_text

REMOVED_FILTERS = frozenset({"urlize", "xmlattr"})  # HTML output that grows with the arguments


def bounded_filters(filters: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    custom = {"join": _join, "sum": _sum}
    return {
        name: _bounded(name, custom.get(name, func), _FILTER_CHECKS.get(name), name in _TEXT_FILTERS)
        for name, func in filters.items()
        if name not in REMOVED_FILTERS
    }


def bounded_tests(tests: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    return {name: _bounded_test(name, func) for name, func in tests.items()}


_TEXT_FILTERS = frozenset(
    "capitalize center escape e forceescape format indent lower replace safe string striptags title "
    "trim truncate upper wordcount wordwrap".split()
)  # filters that turn their input (and arguments) into text
_COMPARING = frozenset({"sort", "dictsort", "unique", "groupby", "min", "max"})
_COMPARING_TESTS = frozenset("in == eq equalto != ne < lt lessthan <= le > gt greaterthan >= ge".split())
_NUMBER_TESTS = frozenset({"divisibleby", "even", "odd"})  # `value % n`: '%100000000s' % 2 is a format


def _check_indent(limits: limits_.Budget, a: dict[str, Any]) -> None:
    width, text = a["width"], a["s"]
    per_line = width if isinstance(width, int) else len(width) if isinstance(width, str) else 0
    limits.fits(len(text) + (text.count("\n") + 1) * per_line, "indented text")


def _check_wordwrap(limits: limits_.Budget, a: dict[str, Any]) -> None:
    text, width, wrap = a["s"], a["width"], a["wrapstring"] or "\n"
    if isinstance(width, int) and width > 0 and isinstance(wrap, str):
        lines = len(text) // width + text.count("\n") + 1
        limits.fits(len(text) + lines * len(wrap), "wrapped text")


def _check_tojson(limits: limits_.Budget, a: dict[str, Any]) -> None:
    indent = a["indent"]
    per_level = indent if isinstance(indent, int) else len(indent) if isinstance(indent, str) else 0
    limits.fits(limits_.weight(a["value"], limits) * (1 + max(per_level, 0)), "JSON text")


_FILTER_CHECKS: dict[str, Callable[[limits_.Budget, dict[str, Any]], None]] = {
    "center": lambda b, a: b.fits(a["width"] if isinstance(a["width"], int) else 0, "a centered string"),
    "indent": _check_indent,
    "wordwrap": _check_wordwrap,
    "replace": lambda b, a: limits_.check_replace(b, a["s"], a["old"], a["new"], a["count"]),
    "format": lambda b, a: limits_.check_percent(b, a["value"], a["kwargs"] or a["args"]),
    "batch": lambda b, a: b.fits_items(a["linecount"] if isinstance(a["linecount"], int) else 0, "a batch"),
    "slice": lambda b, a: b.fits_items(a["slices"] if isinstance(a["slices"], int) else 0, "slices"),
    "round": lambda b, a: limits_.check_round(a["precision"]),
    "tojson": _check_tojson,
    "pprint": lambda b, a: b.fits(2 * limits_.weight(a["value"], b), "pretty-printed text"),
    "urlencode": lambda b, a: b.fits(limits_.weight(a["value"], b), "URL-encoded text"),
}


def _leading(func: Callable[..., Any]) -> Callable[[Context], tuple[Any, ...]]:
    """What Jinja passes before the value (``@pass_context`` and the like)."""
    kind = getattr(getattr(func, "jinja_pass_arg", None), "name", None)
    if kind == "context":
        return lambda context: (context,)
    if kind == "eval_context":
        return lambda context: (context.eval_ctx,)
    if kind == "environment":
        return lambda context: (context.environment,)
    return lambda context: ()


def _bounded(name: str, func: Callable[..., Any], check: Any, textual: bool) -> Callable[..., Any]:
    """A filter that ticks, checks sizes first and charges what it built (never folded at compile)."""
    leading, inner = _leading(func), inspect.unwrap(func)  # Jinja's async variants wrap the sync filter
    signature, inner_leading = (inspect.signature(inner) if check else None), _leading(inner)

    @pass_context
    def bounded_filter(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        limits = budget()
        limits.tick()
        if textual:
            value = to_text(value)
            for arg in (*args, *kwargs.values()):
                check_weight(arg, "a filter argument")
        elif name in _COMPARING:
            if not isinstance(value, Mapping | list | tuple | str):
                value = list(value)  # a generator: walked once here, then given to the filter
            check_weight(value, "a sorted value")
        lead = leading(context)
        if signature is not None:
            bound = signature.bind(*inner_leading(context), value, *args, **kwargs)
            bound.apply_defaults()
            check(limits, bound.arguments)
        result = func(*lead, value, *args, **kwargs)
        return result if result is value else limits.charge(result)

    bounded_filter.__name__ = f"{name}_filter"
    return bounded_filter


def _bounded_test(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    leading = _leading(func)

    @pass_context
    def bounded_test(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget().tick()
        if name in ("lower", "upper"):
            value = to_text(value)
        elif name in _COMPARING_TESTS:
            check_weight((value, args), "a compared value")
        elif name in _NUMBER_TESTS and not all(
            isinstance(v, int | float | Undefined) for v in (value, *args)
        ):
            raise TypeError(f"the {name} test takes numbers")
        return func(*leading(context), value, *args, **kwargs)

    bounded_test.__name__ = f"{name}_test"
    return bounded_test


@pass_eval_context
def _join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: str | int | None = None) -> str:
    """Jinja's ``join``, converting and counting item by item."""
    limits = budget()
    if attribute is not None:
        value = map(make_attrgetter(eval_ctx.environment, attribute), value)
    parts, total, separator = [], 0, to_text(d)
    for item in value:
        limits.tick()
        part = to_text(item)
        total += len(part) + len(separator)
        limits.fits(total, "a joined string")
        parts.append(part)
    return sync_do_join(eval_ctx, parts, d)


@pass_environment
def _sum(
    environment: Any, iterable: Iterable[Any], attribute: str | int | None = None, start: Any = 0
) -> Any:
    """Jinja's ``sum``, for numbers only: adding lists or tuples is quadratic."""
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    total, limits = start, budget()
    for item in iterable:
        limits.tick()
        if not (isinstance(item, int | float) and isinstance(total, int | float)):
            raise TypeError("the sum filter adds numbers only")
        total = total + item
    return total
