"""Tools and tool messages in the prompt: the model's own chat template where it can, else a fallback.

A template "supports tools" when ``apply_chat_template(..., tools=...)`` actually shows them
(probed once at load). Then tools, assistant ``tool_calls`` and ``tool`` messages go to it in
the Hugging Face format. Otherwise (SmolLM2's plain ChatML, for one):

- the tools go into the system message as ``FALLBACK_PROMPT`` (their JSON, and the
  instruction to answer with ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``);
- an assistant's calls are written in its content in that same form;
- a tool result is a ``tool`` message when the template renders that role, else a user
  message wrapped in ``<tool_response>``.

Tools are shown when ``tool_choice`` is "auto", or when a constraint forces a call (the model
should know what it is calling); never with "none".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...domain import ChatMessage, GenerationRequest, ToolCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"

FALLBACK_PROMPT = """# Tools

You may call one or more functions to help with the user's request. The functions, as JSON schemas:
<tools>
{tools}
</tools>

To call a function, answer with nothing but one <tool_call></tool_call> block per call, each \
holding a JSON object with the function's name and its arguments:
<tool_call>{{"name": <function-name>, "arguments": <arguments-json-object>}}</tool_call>"""

_PROBE_NAME = "loragate_probe_fn"
_PROBE_TOOL = {
    "type": "function",
    "function": {"name": _PROBE_NAME, "description": "x", "parameters": {"type": "object"}},
}


@dataclass(frozen=True, slots=True)
class TemplateTraits:
    tools: bool = False  # apply_chat_template(tools=...) shows the tools
    tool_role: bool = False  # a "tool" message renders (its content appears)


def template_traits(tokenizer: Any) -> TemplateTraits:
    """What the tokenizer's chat template does with tools and tool messages (tried, not guessed)."""
    user = {"role": "user", "content": "hi"}
    try:
        shown = _PROBE_NAME in _apply(tokenizer, [user], tools=[_PROBE_TOOL])
    except Exception:
        shown = False
    result = {"role": "tool", "content": "loragate_probe_result", "tool_call_id": "call_0"}
    try:
        tool_role = "loragate_probe_result" in _apply(
            tokenizer, [user, {"role": "assistant", "content": "ok"}, result]
        )
    except Exception:
        tool_role = False
    return TemplateTraits(tools=shown, tool_role=tool_role)


def render(tokenizer: Any, traits: TemplateTraits, request: GenerationRequest) -> str:
    """The text the model sees for a chat request: its messages (and tools) through the template."""
    show = bool(request.tools) and (request.tool_choice == "auto" or request.constraint is not None)
    if traits.tools:
        messages = [_hf_message(m) for m in request.messages]
        return _apply(tokenizer, messages, tools=list(request.tools) if show else None)
    messages = [_plain_message(m, traits.tool_role) for m in request.messages]
    if show:
        messages = _with_system(messages, fallback_prompt(request.tools))
    return _apply(tokenizer, messages)


def fallback_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    specs = "\n".join(json.dumps(tool.get("function", tool), ensure_ascii=False) for tool in tools)
    return FALLBACK_PROMPT.format(tools=specs)


def call_text(call: ToolCall) -> str:
    """A call as the fallback format writes it."""
    body = {"name": call.name, "arguments": _arguments(call.arguments)}
    return f"{OPEN}{json.dumps(body, ensure_ascii=False)}{CLOSE}"


def _apply(tokenizer: Any, messages: list[dict[str, Any]], tools: list[Any] | None = None) -> str:
    text: str = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True
    )
    return text


def _hf_message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments(call.arguments)},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def _plain_message(message: ChatMessage, tool_role: bool) -> dict[str, Any]:
    if message.tool_calls:
        calls = "\n".join(call_text(call) for call in message.tool_calls)
        content = f"{message.content}\n{calls}" if message.content else calls
        return {"role": "assistant", "content": content}
    if message.role == "tool" and not tool_role:
        return {"role": "user", "content": f"<tool_response>\n{message.content}\n</tool_response>"}
    return {"role": message.role, "content": message.content}


def _with_system(messages: list[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
    """``prompt`` merged into the system message (after its text), or as a new first one."""
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        content = f"{first['content']}\n\n{prompt}" if first["content"] else prompt
        return [{**first, "content": content}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def _arguments(text: str) -> Any:
    """A call's arguments as an object where they parse (templates expect one), else as they are."""
    try:
        return json.loads(text)
    except ValueError:
        return text
