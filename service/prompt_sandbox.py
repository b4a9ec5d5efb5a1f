"""The bounded Jinja2 sandbox that L1 system prompts render in.

Jinja's ``ImmutableSandboxedEnvironment`` keeps a template away from Python internals, but not
from the CPU or memory: it caps each ``range`` but not loops nested in each other, and its
compiler folds constant expressions, so ``{% set s = 'A' * 200000000 %}`` was built while the
template LOADED. Here (limits and their reasons: :mod:`service.prompt_limits`):

- nothing runs at load: the intercepted operators (``+ * ** %``), the filters and tests (all
  wrapped, ``pass_context``), the finalizer and the helpers below are never folded by the compiler;
- the parsed template is rewritten before it compiles: each ``{% for %}`` iterable goes through
  :func:`guarded` (a step per item), and ``~``, slices, comparisons and computed dict keys
  through :func:`joined`, :func:`sliced`, :func:`compared` and :func:`hashed`, which check sizes
  first;
- every call (macros and ``loop()`` included), operator, filter, test and ``{{ output }}`` ticks the
  render's budget, and text is joined by :func:`bounded_concat`, which stops at the size limit;
- gone: ``lipsum``, and the HTML filters ``urlize`` and ``xmlattr`` (their output grows with
  arguments); ``namespace`` keeps no deeply nested value; ``sum`` adds numbers only.
"""

from __future__ import annotations

import operator
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext, markup_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import pass_context, pass_eval_context
from jinja2.visitor import NodeTransformer
from markupsafe import EscapeFormatter, Markup

from . import prompt_limits as limits_
from .prompt_filters import bounded_filters, bounded_tests
from .prompt_limits import RenderLimitError, budget, check_weight, to_text

__all__ = ["BoundedEnvironment", "RenderLimitError", "render"]

SOURCE_FACTOR = 4  # a template's source may be 4 times the longest prompt
_FORBIDDEN_TAGS: dict[type[nodes.Node], str] = {
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
    nodes.Extends: "extends",
}


def render(template: jinja2.Template, values: Mapping[str, Any], *, timeout: float, max_chars: int) -> str:
    """The template's text, stripped; :class:`RenderLimitError` past ``timeout`` s or ``max_chars``."""
    with limits_.rendering(timeout, max_chars):
        text = template.render(values).strip()
    if len(text) > max_chars:
        raise RenderLimitError(f"the system prompt is {len(text):,} characters long (at most {max_chars:,})")
    return text


def bounded_concat(parts: Iterable[str]) -> str:
    """Jinja's ``environment.concat`` (template output, macro bodies, blocks), stopping at the limit."""
    limits, total, chunks = budget(), 0, []
    for part in parts:
        total += len(part)
        limits.fits(total, "the rendered text")
        chunks.append(part)
    return limits.charge("".join(chunks))


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The store's environment: compile with :meth:`compile_prompt`, render with :func:`render`."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})
    concat = staticmethod(bounded_concat)

    def __init__(self) -> None:
        super().__init__(
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=_finalize,
        )
        del self.globals["lipsum"]
        self.globals["namespace"] = limits_.BoundedNamespace
        self.filters = bounded_filters(self.filters)
        # jinja2 leaves Environment.tests unannotated: mypy infers dict[str, function] from its TESTS table
        self.tests = bounded_tests(self.tests)  # type: ignore[arg-type, assignment]

    def compile_prompt(self, source: str, max_chars: int) -> jinja2.Template:
        """Parse, check and compile a system prompt; ValueError or TemplateSyntaxError if refused."""
        if len(source) > SOURCE_FACTOR * max_chars:
            raise ValueError(
                f"system prompt is {len(source):,} characters long (at most {SOURCE_FACTOR * max_chars:,})"
            )
        tree = self.parse(source)
        check_constructs(tree)
        tree = _Harden().visit(tree)
        tree.set_environment(self)
        return self.from_string(tree)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        limits = budget()
        limits.tick()
        if not self.is_safe_callable(obj):
            raise SecurityError(f"{obj!r} is not safely callable")
        args = limits_.checked_method_args(limits, obj, args, kwargs)
        if isinstance(obj, LoopContext) and args:  # a recursive loop's next level
            args = (guarded(args[0]), *args[1:])
        elif getattr(obj, "__name__", "") == "changed" and isinstance(
            getattr(obj, "__self__", None), LoopContext
        ):
            check_weight(args, "a value loop.changed compares")
        return limits.charge(context.call(obj, *args, **kwargs))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        limits = budget()
        limits.tick()
        limits_.check_binop(limits, operator, left, right)
        return limits.charge(self.binop_table[operator](left, right))

    def getitem(self, obj: Any, argument: Any) -> Any:
        check_weight(argument, "an index")  # hashed, compared, or quoted in an error message
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja's ``str.format`` wrapper, with a formatter that checks widths and sizes."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType):
            return None
        owner, name = value.__self__, value.__name__
        if name not in ("format", "format_map") or not isinstance(owner, str):
            return None
        formatter = (
            _EscapeFormatter(self, escape=owner.escape) if isinstance(owner, Markup) else _Formatter(self)
        )

        def format_text(*args: Any, **kwargs: Any) -> str:
            if name == "format_map":
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs, args = args[0], ()
            return type(owner)(formatter.vformat(owner, args, kwargs))

        return format_text


@pass_context
def _finalize(context: Context, value: Any) -> str:
    """Every ``{{ output }}``: a step, and no unbounded ``str()`` of a container."""
    budget().tick()
    return to_text(value)


class _Formatter(SandboxedFormatter):
    built = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self.built = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:
            check_weight(value, "a converted field")
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        limits = budget()
        limits.tick()
        limits_.check_format_spec(limits, format_spec)
        check_weight(value, "a formatted field")
        text = super().format_field(value, format_spec)
        self.built += len(text)
        limits.fits(self.built, "a formatted string")
        return text


class _EscapeFormatter(_Formatter, EscapeFormatter):
    pass


# -- the rewritten template -------------------------------------------------------------------
def _helper(name: str, args: list[nodes.Node], lineno: int) -> nodes.Call:
    helper = nodes.ImportedName(f"{__name__}.{name}", lineno=lineno)  # how extensions call Python
    return nodes.Call(helper, args, [], None, None, lineno=lineno)


class _Harden(NodeTransformer):
    # NodeTransformer.generic_visit transforms a node's children in place and returns the node itself
    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _helper("guarded", [node.iter], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _helper("joined", list(node.nodes), node.lineno)

    def visit_Getitem(self, node: nodes.Getitem) -> nodes.Node:
        self.generic_visit(node)
        if not isinstance(node.arg, nodes.Slice):  # items go through environment.getitem
            return node
        bounds = [
            part or nodes.Const(None, lineno=node.lineno)
            for part in (node.arg.start, node.arg.stop, node.arg.step)
        ]
        return _helper("sliced", [node.node, *bounds], node.lineno)

    def visit_Pair(self, node: nodes.Pair) -> nodes.Node:
        self.generic_visit(node)
        if not isinstance(node.key, nodes.Const):  # {key: value} hashes the key
            node.key = _helper("hashed", [node.key], node.lineno)
        return node

    def visit_Compare(self, node: nodes.Compare) -> nodes.Node:
        self.generic_visit(node)
        args: list[nodes.Node] = [node.expr]
        for operand in node.ops:
            args += [nodes.Const(operand.op, lineno=node.lineno), operand.expr]
        return _helper("compared", args, node.lineno)


def guarded(iterable: Iterable[Any]) -> Iterator[Any]:
    """A ``{% for %}`` iterable: a step per item."""
    limits = budget()
    for item in iterable:
        limits.tick()
        yield item


@pass_eval_context
def joined(eval_ctx: Any, *parts: Any) -> str:
    """``a ~ b``."""
    limits = budget()
    texts = [to_text(part) for part in parts]
    limits.fits(sum(map(len, texts)), "a string joined with ~")
    return limits.charge(markup_join(texts) if eval_ctx.autoescape else "".join(texts))


def sliced(value: Any, start: Any, stop: Any, step: Any) -> Any:
    """``value[start:stop:step]``: a copy, charged."""
    return budget().charge(value[start:stop:step])


def hashed(key: Any) -> Any:
    """A computed key of a ``{key: value}`` literal: hashing a tuple costs all of its (shared) items."""
    check_weight(key, "a key")
    return key


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "lteq": operator.le,
    "gt": operator.gt,
    "gteq": operator.ge,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}


def compared(left: Any, *rest: Any) -> Any:
    """``a == b``, ``a in b``, ``a < b < c``: comparing containers costs their size, so check it first."""
    check_weight(left, "a compared value")
    result: Any = True
    for index in range(0, len(rest), 2):
        right = rest[index + 1]
        check_weight(right, "a compared value")
        result = _COMPARE[rest[index]](left, right)
        if not result:
            return result
        left = right
    return result


# -- checks at load -------------------------------------------------------------------------------
def check_constructs(tree: nodes.Template) -> None:
    """Refuse what a sandboxed prompt has no use for: file access and private attributes."""
    for node in tree.find_all(tuple(_FORBIDDEN_TAGS)):
        tag = _FORBIDDEN_TAGS[type(node)]
        raise ValueError(f"system prompt, line {node.lineno}: {{% {tag} %}} is not allowed (no file access)")
    named: tuple[type[nodes.Getattr | nodes.Getitem | nodes.Filter], ...] = (
        nodes.Getattr,
        nodes.Getitem,
        nodes.Filter,
    )
    for node in tree.find_all(named):
        if isinstance(node, nodes.Getattr):
            attr: object = node.attr
        elif isinstance(node, nodes.Getitem):
            attr = node.arg.value if isinstance(node.arg, nodes.Const) else None
        else:
            first = node.args[0] if node.name == "attr" and node.args else None
            attr = first.value if isinstance(first, nodes.Const) else None
        if isinstance(attr, str) and attr.startswith("_"):
            raise ValueError(f"system prompt, line {node.lineno}: access to {attr!r} is not allowed")
