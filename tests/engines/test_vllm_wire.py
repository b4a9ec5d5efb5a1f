"""What the vLLM backend sends for tools, constraints, logprobs, penalties and raw prompts, and
how it reads vLLM's tool-call, logprob and completion chunks back (the shapes vLLM 0.32 streams).

The pure wire functions first; then the backend against scripted replicas, over every client.
"""

from __future__ import annotations

import json
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
    ToolCallDelta,
    TopLogprob,
)
from service.engines.vllm.wire import (
    NO_TOOL_PARSER,
    ChunkReader,
    CompletionReader,
    chat_body,
    completion_body,
    request_body,
    request_error,
)
from service.errors import ContextLengthError, InvalidRequestError
from tests.engines.fake_vllm import Cluster, chunk, tool_chunk, usage
from tests.engines.test_vllm_backend import EngineOn, collect, engine_on  # noqa: F401  (the fixture)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
COMMON = {
    "model",
    "messages",
    "stream",
    "stream_options",
    "n",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "min_tokens",
    "ignore_eos",
}


def make(messages: list[ChatMessage] | None = None, **fields: Any) -> GenerationRequest:
    sampling = SamplingParams(**({"max_tokens": 8} | fields.pop("sampling", {})))
    return GenerationRequest("req-1", messages or [ChatMessage("user", "hi")], sampling, **fields)


def feed(reader: ChunkReader, *payloads: Any) -> list[Delta]:
    return [d for p in payloads for d in reader.feed(p if isinstance(p, str) else json.dumps(p))]


# -- request bodies -------------------------------------------------------------


def test_a_plain_request_sends_no_field_beyond_the_common_ones() -> None:
    path, body = request_body(make(), "m")
    assert path == "/v1/chat/completions"
    assert set(body) == COMMON
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_tool_history_goes_out_in_openais_form() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    messages = [
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", "sunny", tool_call_id="call_1", name="get_weather"),
        ChatMessage("tool", "22 C", tool_call_id="call_1"),
    ]
    body = chat_body(make(messages), "m")
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,  # as OpenAI clients send an assistant turn that only calls
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1", "name": "get_weather"},
        {"role": "tool", "content": "22 C", "tool_call_id": "call_1"},
    ]
    assert "tools" not in body  # a history with calls needs no tools in this turn


@pytest.mark.parametrize(("choice", "parallel"), [("auto", True), ("none", False)])
def test_tools_go_out_with_the_choice_and_parallel_calls(choice: str, parallel: bool) -> None:
    body = chat_body(make(tools=(WEATHER,), tool_choice=choice, parallel_tool_calls=parallel), "m")
    assert body["tools"] == [WEATHER]
    assert (body["tool_choice"], body["parallel_tool_calls"]) == (choice, parallel)


def test_constraints_become_response_formats() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = chat_body(make(constraint=Constraint("json_schema", schema)), "m")
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }
    assert chat_body(make(constraint=Constraint("json_object")), "m")["response_format"] == {
        "type": "json_object"
    }


def test_sampling_extras_go_out_only_when_set() -> None:
    sampling = {
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "logit_bias": ((42, 5.0), (7, -100.0)),
        "logprobs": True,
        "top_logprobs": 3,
    }
    body = chat_body(make(sampling=sampling), "m")
    assert set(body) - COMMON == set(sampling)
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.5, -0.25)
    assert body["logit_bias"] == {"42": 5.0, "7": -100.0}
    assert (body["logprobs"], body["top_logprobs"]) == (True, 3)
    only_logprobs = chat_body(make(sampling={"logprobs": True}), "m")
    assert set(only_logprobs) - COMMON == {"logprobs"}


def test_a_raw_prompt_goes_to_completions() -> None:
    path, body = request_body(make([], prompt="Once upon a time", sampling={"stop": ("\n",)}), "m")
    assert path == "/v1/completions"
    assert body["prompt"] == "Once upon a time" and "messages" not in body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["stop"] == ["\n"] and "logprobs" not in body and "echo" not in body


def test_completion_logprobs_and_prompt_logprobs() -> None:
    body = completion_body(make([], prompt="x", sampling={"logprobs": True, "top_logprobs": 2}), "m")
    assert body["logprobs"] == 2 and "echo" not in body
    sampling = {"logprobs": True, "prompt_logprobs": True}
    echoed = completion_body(make([], prompt="x", sampling=sampling), "m")
    assert (echoed["logprobs"], echoed["echo"], echoed["return_token_ids"]) == (0, True, True)
    constrained = completion_body(make([], prompt="x", constraint=Constraint("json_object")), "m")
    assert constrained["response_format"] == {"type": "json_object"}


# -- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
        'tool_choice=function "get_weather" requires --tool-call-parser to be set',
    ],
)
def test_a_server_without_a_tool_parser_is_a_clear_400_on_tools(message: str) -> None:
    error = request_error(400, json.dumps({"error": {"message": message, "type": "BadRequestError"}}))
    assert isinstance(error, InvalidRequestError) and not isinstance(error, ContextLengthError)
    assert (error.param, error.code, error.message) == ("tools", "unsupported_parameter", NO_TOOL_PARSER)


def test_vllms_param_is_kept_and_a_long_prompt_names_the_prompt() -> None:
    refusal = {"error": {"message": "when using `top_logprobs`, ...", "param": "top_logprobs"}}
    assert request_error(400, json.dumps(refusal)).param == "top_logprobs"
    too_long = json.dumps({"error": {"message": "This model's maximum context length is 1024"}})
    error = request_error(400, too_long, "prompt")
    assert isinstance(error, ContextLengthError) and error.param == "prompt"
    assert request_error(400, "not json").message == "not json"


# -- reading chat chunks -----------------------------------------------------------


def test_streamed_tool_calls_become_tool_call_deltas_and_finish_with_tool_calls() -> None:
    reader = ChunkReader(1)
    deltas = feed(
        reader,
        chunk(0, ""),  # vLLM's role chunk: nothing to relay
        tool_chunk(0, 0, id="call_a", name="get_weather"),
        tool_chunk(0, 0, arguments='{"city": '),
        tool_chunk(0, 0, arguments='"Paris"}'),
        tool_chunk(0, 1, id="call_b", name="get_time", arguments="{}"),
        chunk(0, None, "tool_calls"),
        usage(30, 12),
        "[DONE]",
    )
    calls = [call for d in deltas if d.tool_calls for call in d.tool_calls]
    assert calls == [
        ToolCallDelta(0, "call_a", "get_weather", ""),
        ToolCallDelta(0, None, None, '{"city": '),
        ToolCallDelta(0, None, None, '"Paris"}'),
        ToolCallDelta(1, "call_b", "get_time", "{}"),
    ]
    assert all(d.text == "" for d in deltas)
    assert (deltas[-1].finish_reason, deltas[-1].completion_tokens) == ("tool_calls", 12)


def test_chat_logprobs_ride_on_their_text() -> None:
    entry = {
        "token": " Paris",
        "logprob": -0.25,
        "bytes": [32, 80, 97, 114, 105, 115],
        "top_logprobs": [
            {"token": " Paris", "logprob": -0.25, "bytes": [32, 80, 97, 114, 105, 115]},
            {"token": " Lyon", "logprob": -2.5, "bytes": None},
        ],
    }
    with_logprobs = chunk(0, " Paris")
    with_logprobs["choices"][0]["logprobs"] = {"content": [entry]}
    (delta,) = feed(ChunkReader(1), with_logprobs)
    assert delta.text == " Paris"
    assert delta.logprobs == [
        TokenLogprob(
            " Paris",
            -0.25,
            (32, 80, 97, 114, 105, 115),
            (TopLogprob(" Paris", -0.25, (32, 80, 97, 114, 105, 115)), TopLogprob(" Lyon", -2.5)),
        )
    ]


# -- reading completion chunks --------------------------------------------------------


def completion_chunk(text: str, logprobs: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": None, **extra}
    return {"object": "text_completion", "choices": [choice]}


def test_completion_text_and_logprobs() -> None:
    logprobs = {
        "text_offset": [0],
        "tokens": [" adjusted"],
        "token_logprobs": [-2.2],
        "top_logprobs": [{" adjusted": -2.2, " eukaryotic": -4.0}],
    }
    reader = CompletionReader(1, logprobs=True, top=2)
    deltas = feed(reader, completion_chunk(" adjusted", logprobs), completion_chunk(" image"))
    assert [d.text for d in deltas] == [" adjusted", " image"]
    alternatives = (TopLogprob(" adjusted", -2.2), TopLogprob(" eukaryotic", -4.0))
    assert deltas[0].logprobs == [TokenLogprob(" adjusted", -2.2, None, alternatives)]
    assert deltas[1].logprobs is None


def test_completion_alternatives_are_the_likeliest_as_for_chat() -> None:
    """vLLM lists the sampled token first, then the top ones: a sampled token outside them is no
    alternative."""
    logprobs = {"tokens": [" b"], "token_logprobs": [-5.0], "top_logprobs": [{" b": -5.0, " a": -0.1}]}
    (delta,) = feed(CompletionReader(1, logprobs=True, top=1), completion_chunk(" b", logprobs))
    assert delta.logprobs == [TokenLogprob(" b", -5.0, None, (TopLogprob(" a", -0.1),))]
    (bare,) = feed(CompletionReader(1, logprobs=True, top=0), completion_chunk(" b", logprobs))
    assert bare.logprobs == [TokenLogprob(" b", -5.0)]


def test_the_echoed_prompt_becomes_prompt_logprobs_on_the_first_delta() -> None:
    """vLLM 0.32 with echo + return_token_ids + logprobs=1: the prompt's tokens lead the first chunk."""
    first = completion_chunk(
        " adjusted",
        {
            "text_offset": [0, 3, 11],
            "token_logprobs": [None, -14.8, -2.2],
            "tokens": ["The", " capital", " adjusted"],
            "top_logprobs": [None, {" capital": -14.8, "OSE": -4.0}, {" adjusted": -2.2}],
        },
        prompt_token_ids=[504, 3575],
        token_ids=[14919],
    )
    later = completion_chunk(
        " image",
        {
            "text_offset": [20],
            "token_logprobs": [-3.9],
            "tokens": [" image"],
            "top_logprobs": [{" image": -3.9}],
        },
        token_ids=[2443],
    )
    deltas = feed(CompletionReader(1, logprobs=True, top=1), first, later)
    assert [d.text for d in deltas] == [" adjusted", " image"]  # no prompt text: the service echoes
    capital = TokenLogprob(" capital", -14.8, None, (TopLogprob("OSE", -4.0),))
    assert deltas[0].prompt_logprobs == [None, capital]
    assert [t.token for t in deltas[0].logprobs or []] == [" adjusted"]
    assert deltas[1].prompt_logprobs is None and [t.token for t in deltas[1].logprobs or []] == [" image"]
    without = feed(CompletionReader(1, logprobs=False, top=1), first)  # prompt logprobs only
    assert without[0].prompt_logprobs == [None, capital] and without[0].logprobs is None


# -- the backend, against scripted replicas -----------------------------------------------


async def test_a_raw_prompt_streams_from_completions(engine_on: EngineOn) -> None:  # noqa: F811
    cluster = Cluster(1)
    engine = await engine_on(cluster)
    sampling = SamplingParams(max_tokens=8, logprobs=True, top_logprobs=1, prompt_logprobs=True)
    request = GenerationRequest("req-1", [], sampling, n=2, prompt="Tell me")
    deltas = await collect(engine.stream(request))
    (sent,) = cluster[0].bodies_sent("/v1/completions")
    assert sent["prompt"] == "Tell me" and sent["echo"] is True
    for index in (0, 1):
        mine = [d for d in deltas if d.index == index]
        assert "".join(d.text for d in mine) == "Hello from vLLM"
        assert mine[0].prompt_logprobs == [
            None,
            TokenLogprob("me", -0.5, None, (TopLogprob("me", -0.5),)),
        ]
        assert [t.token for d in mine for t in d.logprobs or []] == ["Hello", " from", " vLLM"]
        assert mine[-1].finish_reason == "stop" and mine[-1].prompt_tokens == 2
    assert cluster[0].bodies_sent("/v1/chat/completions") == []


async def test_chat_logprobs_come_back_per_token(engine_on: EngineOn) -> None:  # noqa: F811
    cluster = Cluster(1)
    engine = await engine_on(cluster)
    deltas = await collect(engine.stream(make(sampling={"logprobs": True, "top_logprobs": 2})))
    tokens = [t for d in deltas for t in d.logprobs or []]
    assert [t.token for t in tokens] == ["Hello", " from", " vLLM"]
    assert all(len(t.top) == 2 for t in tokens)


async def test_tool_calls_from_a_replica_reach_the_deltas(engine_on: EngineOn) -> None:  # noqa: F811
    cluster = Cluster(1)
    cluster[0].chunks = [
        tool_chunk(0, 0, id="call_a", name="get_weather"),
        tool_chunk(0, 0, arguments='{"city": "Paris"}'),
    ]
    cluster[0].finish = "tool_calls"
    engine = await engine_on(cluster)
    deltas = await collect(engine.stream(make(tools=(WEATHER,))))
    pieces = [c for d in deltas for c in d.tool_calls or []]
    assert [(c.id, c.name, c.arguments) for c in pieces] == [
        ("call_a", "get_weather", ""),
        (None, None, '{"city": "Paris"}'),
    ]
    assert deltas[-1].finish_reason == "tool_calls"
    (sent,) = cluster[0].bodies_sent("/v1/chat/completions")
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "auto"


async def test_tools_on_a_replica_without_a_parser_are_a_clear_400(engine_on: EngineOn) -> None:  # noqa: F811
    cluster = Cluster(1)
    cluster[0].tool_parser = False
    engine = await engine_on(cluster)
    with pytest.raises(InvalidRequestError) as caught:
        await collect(engine.stream(make(tools=(WEATHER,))))
    assert (caught.value.status_code, caught.value.param, caught.value.code) == (
        400,
        "tools",
        "unsupported_parameter",
    )
    assert "--tool-call-parser" in caught.value.message
    # tool_choice "none" (what a named or required choice becomes) needs no parser
    answer = await collect(engine.stream(make(tools=(WEATHER,), tool_choice="none")))
    assert "".join(d.text for d in answer) == "Hello from vLLM"
