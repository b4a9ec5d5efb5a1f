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

import json
import secrets
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
    """The request's tools and format as the engine takes them (400 on anything it cannot honour)."""
    tools = body.tools or []
    choice = body.tool_choice
    if choice is not None and not tools:
        raise InvalidRequestError("tool_choice is only allowed when tools are given.", param="tool_choice")
    names = [tool.function.name for tool in tools]
    if len(set(names)) != len(names):
        raise InvalidRequestError("Each tool needs a name of its own.", param="tools")
    for i, tool in enumerate(tools):
        check_schema(
            tool.function.parameters or NO_ARGUMENTS, f"tools.{i}.function.parameters", max_schema_bytes
        )
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
        schema = call_schema(chosen)
        check_schema(schema, "tools", max_schema_bytes * 2)
        return OutputPlan(specs, "none", parallel, Constraint("json_schema", schema), forced=True)
    mode: Literal["none", "auto"] = "none" if choice == "none" or not tools else "auto"
    return OutputPlan(specs, mode, parallel, constraint)


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


def closed(schema: Any) -> Any:
    """A copy in which every object that lists ``properties`` allows no others unless it says so.

    Only subschemas are visited (``const``, ``enum`` and ``default`` are data, left as they are).
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            out[key] = {name: closed(sub) for name, sub in schema[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            out[key] = [closed(sub) for sub in schema[key]]
    for key in _SCHEMA_VALUES:
        if key in schema:
            out[key] = closed(schema[key])
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def check_schema(schema: Mapping[str, Any], param: str, max_bytes: int) -> None:
    """400 for a schema that is too large or not a JSON schema (the grammar compilers assume one)."""
    size = len(json.dumps(schema))
    if size > max_bytes:
        raise InvalidRequestError(
            f"This JSON schema has {size} bytes; this server takes at most {max_bytes}.", param=param
        )
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequestError(f"Invalid JSON schema: {exc.message[:300]}", param=param) from None


async def forced_calls(deltas: AsyncGenerator[Delta, None]) -> AsyncGenerator[Delta, None]:
    """A forced call's JSON, per choice, held and sent as one tool call when the choice finishes.

    If the JSON is cut short (the token limit) it cannot be a call: the text goes out as content
    with its finish reason, as OpenAI does with a truncated answer.
    """
    held: dict[int, Delta] = {}
    async with aclosing(deltas):
        async for delta in deltas:
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


def _as_call(text: str) -> ToolCallDelta | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or "arguments" not in value:
        return None
    return ToolCallDelta(0, id=new_call_id(), name=value["name"], arguments=json.dumps(value["arguments"]))
