"""Tools and output formats, engine-agnostic: what the planner asks an engine for, and what comes back.

- ``plan_output``: a request's ``tools``, ``tool_choice`` and ``response_format`` become the
  engine's ``tools``/``tool_choice`` and a :class:`Constraint`. Every JSON schema is checked
  (valid, within ``max_schema_bytes``) before an engine sees it.
- Schemas are closed before decoding: an object that lists its ``properties`` and says nothing
  of ``additionalProperties`` gets none (``closed``), as OpenAI's strict mode and vLLM's
  xgrammar backend do. Otherwise a model may add keys until it runs out of tokens.
- A named or ``required`` tool choice is served the same way on every engine: the output is
  decoded under the schema ``{"name": <a tool>, "arguments": <its parameters>}`` and
  ``forced_calls`` turns that JSON into the tool call. So the arguments always parse and match
  the function's parameters, on any model; vLLM's own named choice returns a JSON *string* on
  some parsers (FACTS: hermes on SmolLM2), which this route never depends on.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .domain import Constraint, Delta, FinishReason, ToolCallDelta
from .errors import InvalidRequestError
from .protocol import ChatCompletionRequest, NamedToolChoice, Tool

NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """What the engine is asked for; ``forced``: wrap the constrained JSON as a tool call."""

    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: Literal["none", "auto"] = "auto"
    parallel_tool_calls: bool = True
    constraint: Constraint | None = None
    forced: bool = False


def plan_output(body: ChatCompletionRequest, max_schema_bytes: int) -> OutputPlan:
    """The request's tools and format as the engine takes them (400 on anything it cannot honour).

    Checking schemas is CPU work (~0.3 s for a 64 KB schema): the planner runs this on a worker
    thread when a request has any (``has_schemas``), and the tools' schemas together are bounded
    (``MAX_TOOLS_SCHEMA_FACTOR``) before any is validated.
    """
    tools = body.tools or []
    choice = body.tool_choice
    if choice is not None and not tools:
        raise InvalidRequestError("tool_choice is only allowed when tools are given.", param="tool_choice")
    names = [tool.function.name for tool in tools]
    if len(set(names)) != len(names):
        raise InvalidRequestError("Each tool needs a name of its own.", param="tools")
    parameters = [tool.function.parameters or NO_ARGUMENTS for tool in tools]
    total = sum(
        measure(schema, f"tools.{i}.function.parameters", max_schema_bytes)
        for i, schema in enumerate(parameters)
    )
    limit = max_schema_bytes * MAX_TOOLS_SCHEMA_FACTOR
    if total > limit:
        raise InvalidRequestError(
            f"The tools' parameter schemas have {total} bytes in all; this server takes at most {limit}.",
            param="tools",
        )
    for i, schema in enumerate(parameters):
        check_schema(schema, f"tools.{i}.function.parameters", max_schema_bytes)
    constraint = _format_constraint(body, max_schema_bytes)
    specs = tuple(tool.model_dump(mode="json", exclude_none=True) for tool in tools)
    parallel = body.parallel_tool_calls is not False
    if isinstance(choice, NamedToolChoice) or choice == "required":
        if constraint is not None:
            raise InvalidRequestError(
                "A named or required tool_choice cannot be combined with a JSON response_format.",
                param="response_format",
            )
        chosen = _chosen(tools, choice)
        schema = call_schema(chosen)  # of checked parts: its size and depth are all there is to check
        measure(schema, "tools", max_schema_bytes * 2, MAX_SCHEMA_DEPTH + CALL_SCHEMA_DEPTH)
        return OutputPlan(specs, "none", parallel, Constraint("json_schema", schema), forced=True)
    mode: Literal["none", "auto"] = "none" if choice == "none" or not tools else "auto"
    return OutputPlan(specs, mode, parallel, constraint)


def has_schemas(body: ChatCompletionRequest) -> bool:
    """Whether ``plan_output`` has JSON schemas to check (work for a thread, not the event loop)."""
    fmt = body.response_format
    return bool(body.tools) or (fmt is not None and fmt.json_schema is not None)


def _chosen(tools: list[Tool], choice: NamedToolChoice | str) -> list[Tool]:
    if not isinstance(choice, NamedToolChoice):
        return tools
    chosen = [tool for tool in tools if tool.function.name == choice.function.name]
    if not chosen:
        raise InvalidRequestError(
            "tool_choice names a function that is not among the tools.", param="tool_choice"
        )
    return chosen


def call_schema(tools: list[Tool]) -> dict[str, Any]:
    """The JSON of one call to one of ``tools``: its name and arguments that match its parameters."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool.function.name},
                "arguments": closed(tool.function.parameters or NO_ARGUMENTS),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _format_constraint(body: ChatCompletionRequest, max_schema_bytes: int) -> Constraint | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Constraint("json_object")
    assert fmt.json_schema is not None  # the wire model checks it
    schema = fmt.json_schema.schema_ or {"type": "object"}
    check_schema(schema, "response_format.json_schema.schema", max_schema_bytes)
    return Constraint("json_schema", closed(schema))


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SCHEMA_VALUES = ("items", "not", "if", "then", "else", "contains", "additionalProperties", "propertyNames")


def closed(schema: Any, *, close: bool = True) -> Any:
    """A copy in which every object that lists ``properties`` allows no others unless it says so.

    Only subschemas are visited (``const``, ``enum`` and ``default`` are data, left as they are).
    A schema that combines others (``allOf``, ``anyOf``, ``oneOf``, ``$ref``) is not closed at its
    own level, nor are ``allOf`` branches: their properties add up, and closing one part would
    refuse the properties another part allows.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            out[key] = {name: closed(sub) for name, sub in schema[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            out[key] = [closed(sub, close=key != "allOf") for sub in schema[key]]
    for key in _SCHEMA_VALUES:
        if key in schema:
            out[key] = closed(schema[key])
    combines = any(key in schema for key in ("allOf", "anyOf", "oneOf", "$ref"))
    if (
        close
        and not combines
        and isinstance(schema.get("properties"), dict)
        and "additionalProperties" not in schema
    ):
        out["additionalProperties"] = False
    return out


# JSON nesting (objects and arrays) a schema may have. The schema checker, ``closed`` and the
# grammar compilers recurse per level: deeper schemas would end in a RecursionError (a 500), not a
# 400. 64 levels are ~32 nested subschemas; OpenAI's strict mode allows 10.
MAX_SCHEMA_DEPTH = 64
CALL_SCHEMA_DEPTH = 8  # what ``call_schema`` puts around a tool's parameters


MAX_TOOLS_SCHEMA_FACTOR = 4  # all tools' parameter schemas together: this many max_schema_bytes
_CHECKED_KEPT = 1024  # schemas remembered as valid (agents send the same tools every turn)
_checked: OrderedDict[bytes, None] = OrderedDict()
_checked_lock = threading.Lock()


def measure(schema: Mapping[str, Any], param: str, max_bytes: int, max_depth: int = MAX_SCHEMA_DEPTH) -> int:
    """A schema's size in bytes; 400 if it is too deep or too large (cheap: before validating it)."""
    depth = nesting(schema)
    if depth > max_depth:
        raise InvalidRequestError(
            f"This JSON schema is nested {depth} levels deep; this server takes at most {max_depth}.",
            param=param,
        )
    size = len(json.dumps(schema))
    if size > max_bytes:
        raise InvalidRequestError(
            f"This JSON schema has {size} bytes; this server takes at most {max_bytes}.", param=param
        )
    return size


def check_schema(
    schema: Mapping[str, Any], param: str, max_bytes: int, max_depth: int = MAX_SCHEMA_DEPTH
) -> None:
    """400 for a schema too large, too deep or not a JSON schema (the grammar compilers assume one).

    Valid schemas are remembered (by digest): the metaschema check costs ~5 us per subschema.
    """
    measure(schema, param, max_bytes, max_depth)
    key = hashlib.blake2b(json.dumps(schema, sort_keys=True).encode(), digest_size=16).digest()
    with _checked_lock:
        if key in _checked:
            _checked.move_to_end(key)
            return
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequestError(f"Invalid JSON schema: {exc.message[:300]}", param=param) from None
    with _checked_lock:
        _checked[key] = None
        while len(_checked) > _CHECKED_KEPT:
            _checked.popitem(last=False)


def nesting(value: Any) -> int:
    """How deep objects and arrays nest in ``value`` (a scalar: 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


async def forced_calls(deltas: AsyncGenerator[Delta, None]) -> AsyncGenerator[Delta, None]:
    """A forced call's JSON, per choice, held and sent as one tool call when the choice finishes.

    If the JSON is cut short (the token limit) it cannot be a call: the text goes out as content
    with its finish reason, as OpenAI does with a truncated answer.
    """
    held: dict[int, Delta] = {}
    async with aclosing(_about_the_tools(deltas)) as tagged:
        async for delta in tagged:
            keep = held.setdefault(delta.index, Delta(delta.index, "", queue_seconds=delta.queue_seconds))
            keep.text += delta.text
            if delta.logprobs:
                keep.logprobs = (keep.logprobs or []) + delta.logprobs
            if delta.finish_reason is None:
                continue
            del held[delta.index]
            call = _as_call(keep.text) if delta.finish_reason == "stop" else None
            reason: FinishReason = delta.finish_reason if call is None else "tool_calls"
            yield replace(
                delta,
                text=keep.text if call is None else "",
                tool_calls=None if call is None else [call],
                finish_reason=reason,
                logprobs=keep.logprobs,
                queue_seconds=keep.queue_seconds,
            )


async def _about_the_tools(deltas: AsyncGenerator[Delta, None]) -> AsyncGenerator[Delta, None]:
    """Engines name ``response_format`` when the output's schema cannot be decoded; here the schema
    is the tools' (the client sent no response_format), so the error names ``tools``."""
    try:
        async with aclosing(deltas):
            async for delta in deltas:
                yield delta
    except InvalidRequestError as exc:
        if exc.param == "response_format":
            exc.param = "tools"
        raise


def _as_call(text: str) -> ToolCallDelta | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or "arguments" not in value:
        return None
    return ToolCallDelta(0, id=new_call_id(), name=value["name"], arguments=json.dumps(value["arguments"]))
