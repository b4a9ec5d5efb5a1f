"""Tools, output formats, logprobs and the field rule, through the real openai SDK and a real server.

The engine is scripted (``ScriptedEngine``), so these tests pin what the gateway itself does:
which fields are refused or accepted, what the engine is asked for (a named or required tool
choice becomes a JSON-schema constraint), and how its answer is turned into OpenAI's tool calls
and logprobs. The engines' own work (grammar, tool parsing) is tested with real models in
tests/engines and tests/vllm; real-model client tests are in test_agents.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from service.app import create_app
from service.config import Settings
from service.domain import Delta, GenerationRequest, TokenLogprob, ToolCallDelta, TopLogprob
from tests.conftest import API_KEY, LiveServer
from tests.fakes import FakeEngine

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@dataclass
class ScriptedEngine(FakeEngine):
    """Answers every choice with ``deltas`` (their index set per choice)."""

    deltas: list[Delta] = field(default_factory=list)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:  # type: ignore[override]
        self.requests.append(request)
        for index in range(request.n):
            for delta in self.deltas:
                yield Delta(
                    index,
                    delta.text,
                    delta.finish_reason,
                    delta.prompt_tokens,
                    delta.completion_tokens,
                    logprobs=delta.logprobs,
                    tool_calls=delta.tool_calls,
                )


def text(*pieces: str, reason: str = "stop") -> list[Delta]:
    return [Delta(0, p) for p in pieces] + [Delta(0, "", reason, 5, len(pieces))]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[LiveServer, ScriptedEngine]]:
    engine = ScriptedEngine()
    settings = Settings(api_key=API_KEY, model_name=engine.model_name, max_schema_bytes=2048)
    with LiveServer(app=create_app(settings, engine_factory=lambda _: engine), ready_path="/health") as live:
        yield live, engine


@pytest.fixture
def client(server: tuple[LiveServer, ScriptedEngine]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0].base_url, api_key=API_KEY, max_retries=0)


@pytest.fixture
def engine(server: tuple[LiveServer, ScriptedEngine]) -> ScriptedEngine:
    server[1].requests.clear()
    server[1].deltas = text("Hello")
    return server[1]


def create(client: openai.OpenAI, **fields: object) -> object:
    return client.chat.completions.create(model="fake-model", messages=fields.pop("messages", ASK), **fields)  # type: ignore[call-overload]


# -- the field rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("functions", [{"name": "f", "parameters": {}}]),
        ("function_call", "auto"),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("reasoning_effort", "high"),
        ("web_search_options", {}),
        ("verbosity", "low"),
    ],
)
def test_an_openai_field_that_is_not_served_is_refused(
    client: openai.OpenAI, engine: ScriptedEngine, name: str, value: object
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, extra_body={name: value})
    assert caught.value.code == "unsupported_parameter"
    assert caught.value.param == name
    assert not engine.requests


def test_a_field_openai_does_not_know_is_refused(client: openai.OpenAI, engine: ScriptedEngine) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, extra_body={"frobnicate": True})
    assert caught.value.code == "unknown_parameter"
    assert caught.value.param == "frobnicate"


def test_fields_that_change_nothing_are_accepted(client: openai.OpenAI, engine: ScriptedEngine) -> None:
    answer = create(
        client,
        user="u-1",
        metadata={"team": "a"},
        store=False,
        service_tier="auto",
        extra_body={"modalities": ["text"], "prompt_cache_key": "k", "safety_identifier": "s"},
    )
    assert answer.choices[0].message.content == "Hello"  # type: ignore[attr-defined]


def test_sampling_fields_reach_the_engine(client: openai.OpenAI, engine: ScriptedEngine) -> None:
    create(client, presence_penalty=0.5, frequency_penalty=-1.0, logit_bias={"42": 5.5, "7": -100})
    sampling = engine.requests[0].sampling
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (0.5, -1.0)
    assert dict(sampling.logit_bias) == {42: 5.5, 7: -100}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"tool_choice": "auto"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]},
            "tools.0.function.parameters",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
            "response_format.json_schema.schema",
        ),
        (
            {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
            "response_format",
        ),
    ],
)
def test_bad_tool_and_format_fields_get_400(
    client: openai.OpenAI, engine: ScriptedEngine, fields: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, extra_body=fields)
    assert caught.value.param == param
    assert not engine.requests


def test_a_schema_over_the_size_limit_is_refused(client: openai.OpenAI, engine: ScriptedEngine) -> None:
    schema = {"type": "object", "properties": {f"field_{i:05d}": {"type": "string"} for i in range(100)}}
    with pytest.raises(openai.BadRequestError) as caught:
        create(
            client, response_format={"type": "json_schema", "json_schema": {"name": "big", "schema": schema}}
        )
    assert "at most" in caught.value.message


# -- tool calls ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_named_choice_is_decoded_under_the_call_schema_and_returned_as_the_call(
    client: openai.OpenAI, engine: ScriptedEngine, stream: bool
) -> None:
    engine.deltas = text('{"name": "get_weather", ', '"arguments": {"city": "Paris"}}')
    choice = {"type": "function", "function": {"name": "get_weather"}}
    if stream:
        with client.chat.completions.stream(
            model="fake-model",
            messages=ASK,
            tools=[WEATHER],
            tool_choice=choice,  # type: ignore[list-item,arg-type]
        ) as events:
            final = events.get_final_completion()
    else:
        final = create(client, tools=[WEATHER], tool_choice=choice)  # type: ignore[assignment]
    asked = engine.requests[0]
    assert asked.tool_choice == "none" and asked.constraint is not None
    schema = dict(asked.constraint.schema or {})
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"] == WEATHER["function"]["parameters"]  # type: ignore[index]
    assert [t["function"]["name"] for t in asked.tools] == ["get_weather"]  # the model sees the tools
    choice_out = final.choices[0]  # type: ignore[attr-defined]
    assert choice_out.finish_reason == "tool_calls"
    assert not choice_out.message.content  # null; a stream's role chunk opens it with ""
    (call,) = choice_out.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])  # type: ignore[index]


def test_required_allows_any_of_the_tools(client: openai.OpenAI, engine: ScriptedEngine) -> None:
    engine.deltas = text('{"name": "get_time", "arguments": {}}')
    answer = create(client, tools=[WEATHER, TIME], tool_choice="required")
    schema = dict(engine.requests[0].constraint.schema or {})  # type: ignore[union-attr]
    names = [option["properties"]["name"]["const"] for option in schema["anyOf"]]
    assert names == ["get_weather", "get_time"]
    assert answer.choices[0].message.tool_calls[0].function.name == "get_time"  # type: ignore[attr-defined]


def test_a_forced_call_cut_by_the_token_limit_comes_back_as_text(
    client: openai.OpenAI, engine: ScriptedEngine
) -> None:
    engine.deltas = text('{"name": "get_weather", "argu', reason="length")
    answer = create(client, tools=[WEATHER], tool_choice="required", max_tokens=3)
    choice = answer.choices[0]  # type: ignore[attr-defined]
    assert choice.finish_reason == "length"
    assert choice.message.content == '{"name": "get_weather", "argu'
    assert not choice.message.tool_calls


def test_auto_relays_the_engines_tool_calls(client: openai.OpenAI, engine: ScriptedEngine) -> None:
    engine.deltas = [
        Delta(0, "", tool_calls=[ToolCallDelta(0, id="call_1", name="get_weather")]),
        Delta(0, "", tool_calls=[ToolCallDelta(0, arguments='{"city": ')]),
        Delta(0, "", tool_calls=[ToolCallDelta(0, arguments='"Oslo"}')]),
        Delta(0, "", tool_calls=[ToolCallDelta(1, id="call_2", name="get_time", arguments="{}")]),
        Delta(0, "", "tool_calls", 5, 9),
    ]
    answer = create(client, tools=[WEATHER, TIME])
    assert engine.requests[0].tool_choice == "auto" and engine.requests[0].constraint is None
    calls = answer.choices[0].message.tool_calls  # type: ignore[attr-defined]
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_1", "get_weather", '{"city": "Oslo"}'),
        ("call_2", "get_time", "{}"),
    ]
    with client.chat.completions.stream(model="fake-model", messages=ASK, tools=[WEATHER, TIME]) as events:  # type: ignore[list-item]
        final = events.get_final_completion()
    streamed = final.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in streamed] == [
        ("call_1", "get_weather", '{"city": "Oslo"}'),
        ("call_2", "get_time", "{}"),
    ]
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_keeps_the_tools_from_being_called(
    client: openai.OpenAI, engine: ScriptedEngine
) -> None:
    create(client, tools=[WEATHER], tool_choice="none")
    assert engine.requests[0].tool_choice == "none" and engine.requests[0].constraint is None


def test_a_tool_result_reaches_the_engine_after_its_call(
    client: openai.OpenAI, engine: ScriptedEngine
) -> None:
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_9", "content": "21 C and sunny"},
    ]
    create(client, messages=history, tools=[WEATHER])
    assistant, tool = engine.requests[0].messages[-2:]
    assert assistant.tool_calls[0].name == "get_weather" and assistant.tool_calls[0].id == "call_9"
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", "call_9", "21 C and sunny")


def test_a_tool_result_without_its_call_is_refused(client: openai.OpenAI, engine: ScriptedEngine) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, messages=[*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "?"}])
    assert caught.value.param == "messages.1.tool_call_id"


# -- output formats and logprobs ---------------------------------------------------------------------


class City(BaseModel):
    name: str
    population: int


def test_parse_with_a_pydantic_model(client: openai.OpenAI, engine: ScriptedEngine) -> None:
    engine.deltas = text('{"name": "Oslo", ', '"population": 709000}')
    answer = client.chat.completions.parse(model="fake-model", messages=ASK, response_format=City)  # type: ignore[arg-type]
    assert answer.choices[0].message.parsed == City(name="Oslo", population=709000)
    constraint = engine.requests[0].constraint
    assert constraint is not None and constraint.kind == "json_schema"
    assert (
        constraint.schema == City.model_json_schema() | {"additionalProperties": False} or constraint.schema
    )


def test_json_object_mode_asks_for_a_json_object(client: openai.OpenAI, engine: ScriptedEngine) -> None:
    create(client, response_format={"type": "json_object"})
    constraint = engine.requests[0].constraint
    assert constraint is not None and (constraint.kind, constraint.schema) == ("json_object", None)


LOGPROBS = [
    Delta(
        0,
        "Hi",
        logprobs=[
            TokenLogprob("Hi", -0.1, (72, 105), (TopLogprob("Hi", -0.1, (72, 105)), TopLogprob("Yo", -2.5)))
        ],
    ),
    Delta(
        0,
        "!",
        logprobs=[TokenLogprob("!", -0.3, (33,), (TopLogprob("!", -0.3, (33,)), TopLogprob(".", -1.5)))],
    ),
    Delta(0, "", "stop", 5, 2),
]


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_come_back_per_token(client: openai.OpenAI, engine: ScriptedEngine, stream: bool) -> None:
    engine.deltas = LOGPROBS
    if stream:
        chunks = list(create(client, logprobs=True, top_logprobs=2, stream=True))  # type: ignore[call-overload]
        tokens = [t for c in chunks for ch in c.choices if ch.logprobs for t in ch.logprobs.content or []]
    else:
        tokens = create(client, logprobs=True, top_logprobs=2).choices[0].logprobs.content  # type: ignore[attr-defined]
    sampling = engine.requests[0].sampling
    assert sampling.logprobs and sampling.top_logprobs == 2
    assert [(t.token, t.logprob, t.bytes) for t in tokens] == [("Hi", -0.1, [72, 105]), ("!", -0.3, [33])]
    assert [[a.token for a in t.top_logprobs] for t in tokens] == [["Hi", "Yo"], ["!", "."]]


def test_no_logprobs_unless_asked(client: openai.OpenAI, engine: ScriptedEngine) -> None:
    engine.deltas = LOGPROBS
    answer = create(client)
    assert answer.choices[0].logprobs is None  # type: ignore[attr-defined]
    assert not engine.requests[0].sampling.logprobs
