"""Review of issue 16's surface: what one client's request can do to the gateway, and the field rule.

Each test here failed before its fix:

- a deeply nested JSON schema ended in a RecursionError (500) in the schema checks;
- OpenAI fields that ``completion_create_params`` knows got ``unknown_parameter``, or a type error
  about a union, instead of being accepted or refused with ``unsupported_parameter``;
- a hidden chain-of-thought template's reasoning left through ``logprobs``;
- ``/v1/completions`` (prompts x n x echo x logprobs) and chat (n x max_tokens x top_logprobs)
  could ask for an answer of billions of logprob values;
- a forced tool call whose parameters cannot be decoded named ``response_format``, which the
  client never sent;
- a completions prompt that tokenises to nothing (control characters) failed its prefill (500);
- tool schemas were checked on the event loop (~0.3 s per 60 KB, 5 s for 15 such tools, every
  other request stalled meanwhile), with no bound on all tools' schemas together;
- a long answer's logprobs were validated and dumped as pydantic models on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import httpx
import pytest
from openai.types.chat import completion_create_params

from service.app import create_app
from service.config import Settings
from service.domain import Delta, GenerationRequest, TokenLogprob, TopLogprob
from service.planning import MAX_LOGPROB_VALUES
from service.protocol import ChatCompletion, ChatCompletionRequest
from service.tool_calls import MAX_SCHEMA_DEPTH
from tests.api.conftest import AUTH
from tests.api.helpers import CHAT_URL, assert_envelope, chat_body, sse_events
from tests.conftest import API_KEY, TINY_MODEL
from tests.fakes import FakeEngine, fake_prompt_logprobs
from tests.worlds import build_deployment

COMPLETIONS_URL = "/v1/completions"


@dataclass
class PieceEngine(FakeEngine):
    """Answers each choice with ``pieces``, one token each, with a logprob entry per token."""

    pieces: Sequence[str] = ("Hello",)
    asked: list[GenerationRequest] = field(default_factory=list)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:  # type: ignore[override]
        self.asked.append(request)
        wants = request.sampling.logprobs
        for index in range(request.n):
            for position, piece in enumerate(self.pieces):
                top = tuple(
                    TopLogprob(f"alt{j}", -1.0 - j, (97,)) for j in range(request.sampling.top_logprobs)
                )
                entries = [TokenLogprob(piece, -0.5, tuple(piece.encode()), top)] if wants else None
                prompt = fake_prompt_logprobs(request) if index == position == 0 else None
                yield Delta(index, piece, logprobs=entries, prompt_logprobs=prompt)
            yield Delta(index, "", "stop", 5, len(self.pieces), logprobs=[] if wants else None)


def settings_for(engine: FakeEngine, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_key": API_KEY,
        "model_name": engine.model_name,
        "max_request_bytes": 1 << 20,
    }
    return Settings(**(values | overrides))


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[httpx.AsyncClient, PieceEngine]]:
    engine = PieceEngine(model_name=TINY_MODEL)
    app = create_app(settings_for(engine), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=AUTH) as client:
            yield client, engine


# -- schemas nested too deep -------------------------------------------------------------------------


def nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"anyOf": [schema]}
    return schema


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": nested(90)}}},
            "response_format.json_schema.schema",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": nested(90)}}]},
            "tools.0.function.parameters",
        ),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": nested(90)}}],
                "tool_choice": "required",
            },
            "tools.0.function.parameters",
        ),
    ],
)
async def test_a_schema_nested_too_deep_is_a_400_not_a_recursion_error(
    gateway: tuple[httpx.AsyncClient, PieceEngine], fields: dict[str, Any], param: str
) -> None:
    client, engine = gateway
    response = await client.post(CHAT_URL, json=chat_body(**fields))
    error = assert_envelope(response, 400, param=param)
    assert "nested" in error["message"]
    assert not engine.asked


async def test_a_schema_as_deep_as_allowed_still_serves(
    gateway: tuple[httpx.AsyncClient, PieceEngine],
) -> None:
    client, engine = gateway
    schema = nested(MAX_SCHEMA_DEPTH // 2 - 1)  # {"anyOf": [...]}: two levels each
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    response = await client.post(CHAT_URL, json=chat_body(tools=[tool], tool_choice="required"))
    assert response.status_code == 200, response.text
    assert engine.asked[0].constraint is not None


# -- the field rule ------------------------------------------------------------------------------------


def test_every_field_of_openais_chat_request_is_known() -> None:
    """Each field is accepted, honoured or refused by name (unsupported_parameter), never unknown."""
    openai_fields = set(get_type_hints(completion_create_params.CompletionCreateParamsBase))
    openai_fields |= {"stream"}
    assert openai_fields - set(ChatCompletionRequest.model_fields) == set()


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
        ({"tools": [{"type": "custom", "custom": {"name": "sql"}}]}, "tools.0.type"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {
                        "mode": "auto",
                        "tools": [{"type": "function", "function": {"name": "f"}}],
                    },
                },
            },
            "tool_choice",
        ),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "custom", "custom": {"name": "f"}},
            },
            "tool_choice",
        ),
        ({"messages": [{"role": "function", "name": "f", "content": "42"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content",
        ),
    ],
)
async def test_openai_fields_not_served_are_unsupported_parameters(
    gateway: tuple[httpx.AsyncClient, PieceEngine], fields: dict[str, Any], param: str
) -> None:
    client, engine = gateway
    response = await client.post(CHAT_URL, json=chat_body(**fields))
    assert_envelope(response, 400, param=param, code="unsupported_parameter")
    assert not engine.asked


async def test_prompt_cache_fields_change_nothing_and_are_accepted(
    gateway: tuple[httpx.AsyncClient, PieceEngine],
) -> None:
    client, _ = gateway
    fields = {"prompt_cache_options": {"mode": "implicit", "ttl": "30m"}, "prompt_cache_retention": "24h"}
    response = await client.post(CHAT_URL, json=chat_body(**fields))
    assert response.status_code == 200, response.text


# -- hidden chain of thought and logprobs -------------------------------------------------------------

TENANTS = """
tenants:
  acme:
    default_department: legal
    departments:
      legal: {template: acme/legal}
"""
HIDDEN = {"acme/legal.yaml": 'version: "1"\ncot: hidden\nsystem: "You review contracts."\n'}
REASONING = ("The", " secret", " plan", ".", " Answer", ":", " Yes", " indeed")


@pytest.fixture
async def hidden_cot(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, PieceEngine]]:
    deployment = build_deployment(tmp_path, tmp_path, tenants=TENANTS, templates=HIDDEN, adapters=[])
    key = deployment.keys.create("acme")[1]
    engine = PieceEngine(model_name=TINY_MODEL, pieces=REASONING)
    app = create_app(deployment.settings, engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", headers=headers
        ) as client:
            yield client, engine


def tokens_of(entries: list[dict[str, Any]]) -> list[str]:
    return [entry["token"] for entry in entries]


@pytest.mark.parametrize("n", [1, 2])
async def test_hidden_reasoning_does_not_leave_through_logprobs(
    hidden_cot: tuple[httpx.AsyncClient, PieceEngine], n: int
) -> None:
    client, _ = hidden_cot
    body = chat_body(logprobs=True, top_logprobs=0, n=n)
    answer = (await client.post(CHAT_URL, json=body)).json()
    streamed = sse_events((await client.post(CHAT_URL, json=body | {"stream": True})).text)
    for index in range(n):
        choice = answer["choices"][index]
        assert choice["message"]["content"] == "Yes indeed"
        assert tokens_of(choice["logprobs"]["content"]) == [" Yes", " indeed"]
        pieces = [c for e in streamed[:-1] for c in e["choices"] if c["index"] == index and c.get("logprobs")]
        assert [t for c in pieces for t in tokens_of(c["logprobs"]["content"])] == [" Yes", " indeed"]
        assert "".join(c["delta"].get("content", "") for c in pieces) == "Yes indeed"


async def test_without_the_marker_the_whole_text_and_its_logprobs_go_out(
    hidden_cot: tuple[httpx.AsyncClient, PieceEngine],
) -> None:
    client, engine = hidden_cot
    engine.pieces = ("No", " marker", " here")
    answer = (await client.post(CHAT_URL, json=chat_body(logprobs=True))).json()
    choice = answer["choices"][0]
    assert choice["message"]["content"] == "No marker here"
    assert tokens_of(choice["logprobs"]["content"]) == ["No", " marker", " here"]


# -- the size of an answer's logprobs ----------------------------------------------------------------


async def test_completions_refuse_more_logprobs_than_an_answer_holds(
    gateway: tuple[httpx.AsyncClient, PieceEngine],
) -> None:
    client, engine = gateway
    prompts = [f"Prompt number {i} " * 40 for i in range(256)]  # ~200 KB of prompts, echoed 8 times
    body = {"model": TINY_MODEL, "prompt": prompts, "n": 8, "echo": True, "logprobs": 20, "max_tokens": 16}
    assert 8 * 21 * sum(len(p) for p in prompts) > MAX_LOGPROB_VALUES
    for stream in (False, True):
        response = await client.post(COMPLETIONS_URL, json=body | {"stream": stream})
        error = assert_envelope(response, 400, param="logprobs")
        assert str(MAX_LOGPROB_VALUES) in error["message"]
    long = {"model": TINY_MODEL, "prompt": ["a"] * 256, "n": 8, "logprobs": 5, "max_tokens": 2000}
    assert_envelope(await client.post(COMPLETIONS_URL, json=long), 400, param="logprobs")
    assert not engine.asked
    small = body | {"prompt": prompts[:4], "n": 2, "logprobs": 1}  # what evaluation harnesses send
    assert (await client.post(COMPLETIONS_URL, json=small)).status_code == 200


async def test_chat_refuses_more_logprobs_than_an_answer_holds(
    gateway: tuple[httpx.AsyncClient, PieceEngine],
) -> None:
    client, engine = gateway
    body = chat_body(n=8, logprobs=True, top_logprobs=20, max_tokens=8192)
    assert_envelope(await client.post(CHAT_URL, json=body), 400, param="top_logprobs")
    assert not engine.asked
    response = await client.post(CHAT_URL, json=body | {"n": 4})  # an 8k model's whole context
    assert response.status_code == 200, response.text


# -- a forced call whose schema the engine cannot decode names the tools -------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_forced_call_whose_parameters_cannot_compile_names_tools(
    client: httpx.AsyncClient, stream: bool
) -> None:
    """On the tiny model (the real grammar compiler): the schema is the tools', not a response_format."""
    parameters = {"type": "object", "properties": {"q": {"$ref": "#/$defs/missing"}}}  # a valid schema
    tool = {"type": "function", "function": {"name": "search", "parameters": parameters}}
    for choice in ("required", {"type": "function", "function": {"name": "search"}}):
        body = chat_body(tools=[tool], tool_choice=choice, stream=stream)
        error = assert_envelope(await client.post(CHAT_URL, json=body), 400, param="tools")
        assert "constrained decoding" in error["message"]
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": parameters}}
    response = await client.post(CHAT_URL, json=chat_body(response_format=fmt, stream=stream))
    assert_envelope(response, 400, param="response_format")


# -- a prompt the tokenizer drops ------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("prompt", ["\x16", ["Paris is", "\x04\x06"]])
async def test_a_prompt_with_no_tokens_is_a_400_not_a_failed_prefill(
    client: httpx.AsyncClient, prompt: str | list[str], stream: bool
) -> None:
    """SmolLM2's tokenizer drops some control characters: such a prompt has no tokens to prefill."""
    body = {"model": TINY_MODEL, "prompt": prompt, "max_tokens": 2, "stream": stream}
    error = assert_envelope(await client.post(COMPLETIONS_URL, json=body), 400, param="prompt")
    assert "no tokens" in error["message"]
    assert (await client.post(COMPLETIONS_URL, json=body | {"prompt": "Paris is"})).status_code == 200


# -- checking schemas is not the event loop's work ----------------------------------------------------


def wide_schema(fields: int) -> dict[str, Any]:
    """~67 bytes a field; the metaschema check costs ~0.3 s for 60 KB of it."""
    properties = {
        f"field_{i:04d}": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5} for i in range(fields)
    }
    return {"type": "object", "properties": properties}


async def max_loop_lag(work: Any) -> tuple[float, Any]:
    """The longest the event loop went without running this task while ``work`` ran, and its result."""
    task = asyncio.ensure_future(work)
    lag = 0.0
    while not task.done():
        before = time.monotonic()
        await asyncio.sleep(0.005)
        lag = max(lag, time.monotonic() - before - 0.005)
    return lag, task.result()


async def test_many_large_tool_schemas_are_refused_before_they_are_checked(
    gateway: tuple[httpx.AsyncClient, PieceEngine],
) -> None:
    """15 tools of ~60 KB: 5 s of schema checks on the event loop (every tenant's requests stalled)."""
    client, engine = gateway
    tools = [
        {"type": "function", "function": {"name": f"f{k}", "parameters": wide_schema(800)}} for k in range(15)
    ]
    started = time.monotonic()
    lag, response = await max_loop_lag(client.post(CHAT_URL, json=chat_body(tools=tools)))
    error = assert_envelope(response, 400, param="tools")
    assert "in all" in error["message"]
    assert time.monotonic() - started < 1.0 and lag < 0.5
    assert not engine.asked


async def test_a_large_schema_is_checked_off_the_event_loop(
    gateway: tuple[httpx.AsyncClient, PieceEngine],
) -> None:
    client, engine = gateway
    tools = [
        {"type": "function", "function": {"name": f"f{k}", "parameters": wide_schema(800 + k)}}
        for k in range(3)
    ]
    lag, response = await max_loop_lag(client.post(CHAT_URL, json=chat_body(tools=tools)))
    assert response.status_code == 200, response.text
    assert lag < 0.2, f"the event loop stood still for {lag:.2f} s"


# -- a long answer's logprobs ---------------------------------------------------------------------


async def test_a_long_answers_logprobs_do_not_hold_the_event_loop(
    gateway: tuple[httpx.AsyncClient, PieceEngine],
) -> None:
    """4,000 tokens with 20 alternatives: pydantic models of them took the event loop ~1 s (validated
    per token, then dumped); plain dicts take a fraction of it. The answer keeps OpenAI's shape."""
    client, engine = gateway
    engine.pieces = [f" w{i}" for i in range(4000)]
    assert (await client.post(CHAT_URL, json=chat_body(logprobs=True, top_logprobs=1))).status_code == 200
    body = chat_body(logprobs=True, top_logprobs=20, max_tokens=4000)
    lag, response = await max_loop_lag(client.post(CHAT_URL, json=body))
    answer = response.json()
    assert ChatCompletion.model_validate(answer).model_dump(mode="json") == answer
    [entry, *_] = answer["choices"][0]["logprobs"]["content"]
    assert entry["token"] == " w0" and entry["bytes"] == [32, 119, 48] and len(entry["top_logprobs"]) == 20
    assert entry["top_logprobs"][0] == {"token": "alt0", "logprob": -1.0, "bytes": [97]}
    assert lag < 0.4, f"the event loop stood still for {lag:.2f} s"
