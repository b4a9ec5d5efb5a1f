"""Tools in the embedded engine: how they reach the prompt, and how "auto" turns calls into tool_calls."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from service.domain import (
    ChatMessage,
    Constraint,
    Delta,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
    ToolCall,
)
from service.engines.local.engine import LocalEngine
from service.engines.local.tool_parser import parse_tool_calls
from service.engines.local.tools import TemplateTraits, fallback_prompt, render, template_traits

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
TOOLS = (WEATHER, TIME)
NAMES = ["get_weather", "get_time"]
HISTORY = [
    ChatMessage("user", "Weather in Paris?"),
    ChatMessage("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
    ChatMessage("tool", "18 C and sunny", tool_call_id="call_1", name="get_weather"),
]
# A template that knows tools, in Hugging Face's format (as Qwen's and Llama 3's do)
TOOLS_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}[call {{ c.function.name }} {{ c.function.arguments | tojson }}]"
    "{% endfor %}"
    "{% if m.tool_call_id %}[for {{ m.tool_call_id }}]{% endif %}</{{ m.role }}>{% endfor %}"
)
STRICT_ROLES = (
    "{% for m in messages %}{% if m.role not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('roles must be system, user or assistant') }}{% endif %}"
    "<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
)


def chat(messages: list[ChatMessage], **fields: Any) -> GenerationRequest:
    return GenerationRequest("r", messages, SamplingParams(max_tokens=8), **fields)


@pytest.fixture
def fresh_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_smollm2s_template_has_no_tools_but_renders_a_tool_role(tokenizer: Any) -> None:
    assert template_traits(tokenizer) == TemplateTraits(tools=False, tool_role=True)


def test_the_fallback_prompt_shows_each_tools_schema(tokenizer: Any) -> None:
    text = render(tokenizer, TemplateTraits(), chat([ChatMessage("user", "Hi")], tools=TOOLS))
    assert json.dumps(WEATHER["function"]) in text and json.dumps(TIME["function"]) in text
    assert '<tool_call>{"name": <function-name>, "arguments": <arguments-json-object>}</tool_call>' in text
    assert text.startswith("<|im_start|>system\n# Tools")  # instead of the template's default system prompt


def test_the_fallback_prompt_joins_the_system_message(tokenizer: Any) -> None:
    messages = [ChatMessage("system", "You are terse."), ChatMessage("user", "Hi")]
    text = render(tokenizer, TemplateTraits(), chat(messages, tools=TOOLS))
    assert text.startswith("<|im_start|>system\nYou are terse.\n\n" + fallback_prompt(TOOLS) + "<|im_end|>")
    assert text.count("<|im_start|>system") == 1


@pytest.mark.parametrize(
    ("choice", "constraint", "shown"),
    [("auto", None, True), ("none", None, False), ("none", Constraint("json_object"), True)],
)
def test_tools_are_shown_for_auto_and_for_a_forced_call(
    tokenizer: Any, choice: str, constraint: Constraint | None, shown: bool
) -> None:
    request = chat([ChatMessage("user", "Hi")], tools=TOOLS, tool_choice=choice, constraint=constraint)
    assert ("get_weather" in render(tokenizer, TemplateTraits(tool_role=True), request)) is shown


def test_tool_messages_render_through_a_plain_template(tokenizer: Any) -> None:
    text = render(tokenizer, template_traits(tokenizer), chat(HISTORY))
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert f"<|im_start|>assistant\n{call}<|im_end|>" in text
    assert "<|im_start|>tool\n18 C and sunny<|im_end|>" in text


def test_a_template_without_a_tool_role_gets_a_tool_response(fresh_tokenizer: Any) -> None:
    fresh_tokenizer.chat_template = STRICT_ROLES
    traits = template_traits(fresh_tokenizer)
    assert traits == TemplateTraits(tools=False, tool_role=False)
    text = render(fresh_tokenizer, traits, chat(HISTORY))
    assert "<user><tool_response>\n18 C and sunny\n</tool_response></user>" in text


def test_a_template_that_knows_tools_gets_them_in_its_format(fresh_tokenizer: Any) -> None:
    fresh_tokenizer.chat_template = TOOLS_TEMPLATE
    traits = template_traits(fresh_tokenizer)
    assert traits.tools
    text = render(fresh_tokenizer, traits, chat(HISTORY, tools=TOOLS))
    assert text.startswith("<tools>" + json.dumps(WEATHER))
    assert '<assistant>[call get_weather {"city": "Paris"}]</assistant>' in text
    assert "<tool>18 C and sunny[for call_1]</tool>" in text
    assert "# Tools" not in text


async def scripted(*deltas: Delta) -> AsyncGenerator[Delta, None]:
    for delta in deltas:
        yield delta


def pieces(text: str, *, index: int = 0, reason: str = "stop", size: int = 3) -> list[Delta]:
    """``text`` as the engine might send it: a few characters a delta, each with one logprob entry."""
    chunks = [text[i : i + size] for i in range(0, len(text), size)] or [""]
    out = [Delta(index, c, logprobs=[TokenLogprob(c, -0.5)]) for c in chunks]
    out[-1].finish_reason, out[-1].completion_tokens = reason, len(chunks)  # type: ignore[assignment]
    return out


async def parsed(deltas: list[Delta], parallel: bool = True) -> list[Delta]:
    return [d async for d in parse_tool_calls(scripted(*deltas), NAMES, parallel)]


def calls(out: list[Delta]) -> list[tuple[int, str, dict[str, Any]]]:
    found = [c for d in out for c in d.tool_calls or []]
    assert all(c.id is not None and c.id.startswith("call_") for c in found)
    return [(c.index, c.name or "", json.loads(c.arguments)) for c in found]


def content(out: list[Delta]) -> str:
    return "".join(d.text for d in out)


CALL_1 = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
CALL_2 = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'


async def test_a_call_becomes_a_tool_call() -> None:
    out = await parsed(pieces(CALL_1))
    assert calls(out) == [(0, "get_weather", {"city": "Paris"})]
    assert content(out) == "" and out[-1].finish_reason == "tool_calls"
    assert out[-1].completion_tokens == len(pieces(CALL_1))
    assert sum(len(d.logprobs or []) for d in out) == len(pieces(CALL_1))  # held entries go out with the call


async def test_two_calls_and_parallel_false() -> None:
    text = CALL_1 + "\n" + CALL_2
    assert calls(await parsed(pieces(text))) == [(0, "get_weather", {"city": "Paris"}), (1, "get_time", {})]
    out = await parsed(pieces(text), parallel=False)
    assert calls(out) == [(0, "get_weather", {"city": "Paris"})] and out[-1].finish_reason == "tool_calls"


async def test_a_list_of_calls_in_one_block() -> None:
    rome = '{"name": "get_weather", "arguments": {"city": "Rome"}}'
    text = (
        '<tool_call>[{"name": "get_time", "arguments": {}}, ' + rome + "]"
    )  # unclosed at the end: still a call
    assert calls(await parsed(pieces(text))) == [(0, "get_time", {}), (1, "get_weather", {"city": "Rome"})]


async def test_text_then_a_call_streams_the_text_first() -> None:
    out = await parsed(pieces("Let me check. " + CALL_1, size=4))
    assert content(out[:-1]) == "Let me check. "  # out before the call finished
    assert calls(out) == [(0, "get_weather", {"city": "Paris"})]
    first_text = [d for d in out if d.text]
    assert first_text[0].logprobs  # released text keeps its entries


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Par</tool_call>',  # bad JSON
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',  # not one of the tools
        '<tool_call>{"arguments": {}}</tool_call>',  # no name
        '<tool_call>{"name": "get_time"}</tool_call>',  # no arguments
        CALL_1 + '<tool_call>{"name": "get_time", "arguments": 3}</tool_call>',  # one good, one bad
    ],
)
async def test_a_malformed_call_is_plain_content(text: str) -> None:
    out = await parsed(pieces("Sure: " + text, reason="length"))
    assert content(out) == "Sure: " + text and calls(out) == []
    assert out[-1].finish_reason == "length"
    assert sum(len(d.logprobs or []) for d in out) == len(pieces("Sure: " + text))


async def test_plain_text_passes_and_a_lookalike_tag_is_released() -> None:
    out = await parsed(pieces("a < b and <tool_ca is not a tag", size=2))
    assert content(out) == "a < b and <tool_ca is not a tag" and out[-1].finish_reason == "stop"


async def test_choices_are_parsed_apart() -> None:
    mixed = [*pieces("Hello there", index=1), *pieces(CALL_2, index=0)]
    out = await parsed(mixed)
    assert content([d for d in out if d.index == 1]) == "Hello there"
    assert [c.name for d in out if d.index == 0 for c in d.tool_calls or []] == ["get_time"]


async def test_the_engine_parses_only_auto_without_a_constraint(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "_stream", lambda request: scripted(*pieces(CALL_2)))
    auto = chat([ChatMessage("user", "Time?")], tools=TOOLS)
    assert calls([d async for d in engine.stream(auto)]) == [(0, "get_time", {})]
    for request in (
        chat([ChatMessage("user", "Time?")], tools=TOOLS, tool_choice="none"),
        chat([ChatMessage("user", "Time?")], tools=TOOLS, constraint=Constraint("json_object")),
    ):
        assert content([d async for d in engine.stream(request)]) == CALL_2
