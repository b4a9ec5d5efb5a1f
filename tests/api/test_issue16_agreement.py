"""Streamed and whole answers agree on the tiny model (greedy): forced calls with n > 1, logprobs with
stop strings, echo with stop; the auto parser's edge cases (a call cut by max_tokens, parallel calls
turned off, calls that arrive in the finishing delta: before the fix, those stayed plain text)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from service.domain import Delta, TokenLogprob
from service.engines.local.tool_parser import ToolCallParser
from tests.api.helpers import CHAT_URL, chat_body, sse_events
from tests.conftest import TINY_MODEL

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 6}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}


def assembled(events: list[Any], n: int) -> list[dict[str, Any]]:
    """The streamed chunks of each choice put together as a whole answer's choice."""
    choices: list[dict[str, Any]] = [
        {"content": "", "tool_calls": {}, "logprobs": [], "finish_reason": None} for _ in range(n)
    ]
    for event in events[:-1]:
        for chunk in event["choices"]:
            choice = choices[chunk["index"]]
            choice["content"] += chunk["delta"].get("content") or ""
            for call in chunk["delta"].get("tool_calls") or ():
                into = choice["tool_calls"].setdefault(call["index"], {"name": "", "arguments": ""})
                into["name"] += call["function"].get("name") or ""
                into["arguments"] += call["function"].get("arguments") or ""
            if chunk.get("logprobs"):
                choice["logprobs"] += chunk["logprobs"]["content"]
            choice["finish_reason"] = chunk["finish_reason"] or choice["finish_reason"]
    return choices


def whole(choice: dict[str, Any]) -> dict[str, Any]:
    calls = choice["message"].get("tool_calls") or []
    return {
        "content": choice["message"]["content"] or "",
        "tool_calls": {
            i: {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
            for i, c in enumerate(calls)
        },
        "logprobs": (choice.get("logprobs") or {}).get("content") or [],
        "finish_reason": choice["finish_reason"],
    }


async def both(client: httpx.AsyncClient, **fields: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    body = chat_body(temperature=0, **fields)
    answer = (await client.post(CHAT_URL, json=body)).json()
    stream = sse_events((await client.post(CHAT_URL, json=body | {"stream": True})).text)
    n = fields.get("n", 1)
    return [whole(c) for c in answer["choices"]], assembled(stream, n)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
async def test_forced_calls_with_n_and_logprobs_agree(client: httpx.AsyncClient, choice: Any) -> None:
    answer, stream = await both(client, tools=[TOOL], tool_choice=choice, n=3, max_tokens=40, logprobs=True)
    assert answer == stream
    for one in answer:
        assert one["finish_reason"] == "tool_calls", one
        [call] = one["tool_calls"].values()
        assert call["name"] == "get_weather" and set(json.loads(call["arguments"])) == {"city", "unit"}
        assert one["logprobs"], "the call's tokens keep their logprobs"


async def test_a_forced_call_cut_by_max_tokens_is_text_with_length(client: httpx.AsyncClient) -> None:
    answer, stream = await both(client, tools=[TOOL], tool_choice="required", n=2, max_tokens=3)
    assert answer == stream
    assert all(one["finish_reason"] == "length" and not one["tool_calls"] for one in answer)


async def test_logprobs_with_stop_strings_agree_and_match_the_text(client: httpx.AsyncClient) -> None:
    free, _ = await both(client, max_tokens=10, logprobs=True, top_logprobs=2)
    tokens = [entry["token"] for entry in free[0]["logprobs"]]
    stop = tokens[3] if len(tokens[3].strip()) > 1 else tokens[3] + tokens[4]
    answer, stream = await both(client, max_tokens=10, logprobs=True, top_logprobs=2, n=2, stop=[stop])
    assert answer == stream
    for one in answer:
        assert "".join(entry["token"] for entry in one["logprobs"]) == one["content"]


async def test_echo_with_stop_and_logprobs(client: httpx.AsyncClient) -> None:
    body = {"model": TINY_MODEL, "prompt": "Paris is", "max_tokens": 8, "temperature": 0, "logprobs": 1}
    free = (await client.post("/v1/completions", json=body)).json()["choices"][0]
    stop = free["logprobs"]["tokens"][2]
    answer = (await client.post("/v1/completions", json=body | {"echo": True, "stop": [stop]})).json()
    text = answer["choices"][0]["text"]
    assert text == "Paris is" + free["text"][: free["text"].index(stop)]
    logprobs = answer["choices"][0]["logprobs"]
    assert "".join(logprobs["tokens"]) == text
    assert logprobs["text_offset"][-1] + len(logprobs["tokens"][-1]) == len(text)


# -- the auto parser ---------------------------------------------------------------------------------


def feed(parser: ToolCallParser, pieces: list[str], finish: str) -> list[Delta]:
    out = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        entry = [TokenLogprob(piece, -0.1)]
        delta = Delta(0, piece, finish if last else None, logprobs=entry)  # type: ignore[arg-type]
        sent = parser.feed(delta)
        if sent is not None:
            out.append(sent)
    return out


def test_a_call_cut_by_max_tokens_is_content_with_length() -> None:
    pieces = ["Sure. ", "<tool_call>", '{"name": "get_weather", ', '"arguments": {"ci']
    out = feed(ToolCallParser(0, ["get_weather"]), pieces, "length")
    assert "".join(d.text for d in out) == "".join(pieces)
    assert out[-1].finish_reason == "length" and not out[-1].tool_calls
    assert [e.token for d in out for e in d.logprobs or ()] == pieces


def test_parallel_tool_calls_false_keeps_the_first_call() -> None:
    call = '<tool_call>{{"name": "{}", "arguments": {{}}}}</tool_call>'
    out = feed(ToolCallParser(0, ["a", "b"], parallel=False), [call.format("a"), call.format("b")], "stop")
    assert out[-1].finish_reason == "tool_calls"
    assert [c.name for c in out[-1].tool_calls or ()] == ["a"]


def test_calls_that_arrive_with_the_finish_are_parsed() -> None:
    """Text held back to the end (a stop string's prefix, say) reaches the parser in the finishing delta."""
    call = '<tool_call>{{"name": "{}", "arguments": {{}}}}</tool_call>'
    calls = call.format("a") + "\n" + call.format("b")
    for parallel, names in ((True, ["a", "b"]), (False, ["a"])):
        out = feed(ToolCallParser(0, ["a", "b"], parallel=parallel), [calls], "stop")
        assert out[-1].finish_reason == "tool_calls" and out[-1].text == ""
        assert [c.name for c in out[-1].tool_calls or ()] == names
