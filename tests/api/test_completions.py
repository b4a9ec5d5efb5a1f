"""/v1/completions through the real openai SDK and real uvicorn servers.

The tiny model serves the contract end to end (raw prompts, lists of prompts, echo, logprobs,
streams, stops, errors); the fake engine pins the exact shapes (logprobs with echo, streamed and
not), what the engine is asked for, and the error paths; a gated tiny model shows that a client
that leaves aborts every prompt of its request.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from service.app import create_app
from service.completions import merged
from service.config import Settings
from service.domain import Delta, GenerationRequest
from service.errors import ContextLengthError, LoragateError
from tests.api.conftest import FakeServer
from tests.api.helpers import assert_envelope, sse_events
from tests.conftest import API_KEY, TINY_MODEL, LiveServer
from tests.fakes import FAKE_LOGPROB, FAKE_PROMPT_LOGPROB, FakeEngine
from tests.gates import gated_engine
from tests.worlds import build_deployment

URL = "/v1/completions"
PROMPT = "The capital of France is"
OTHER = "Once upon a time"
GREEDY: dict[str, Any] = {
    "model": TINY_MODEL,
    "temperature": 0,
    "max_tokens": 5,
    "extra_body": {"ignore_eos": True},
}


def sdk(base_url: str, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def tiny(live_server: LiveServer) -> openai.OpenAI:
    return sdk(live_server.base_url)


@pytest.fixture(scope="module")
def prompt_tokens(tiny_model_dir: Path) -> dict[str, list[str]]:
    """Each prompt's tokens as text, as the engine tokenises a raw prompt."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return {text: [tokenizer.decode([i]) for i in tokenizer(text).input_ids] for text in (PROMPT, OTHER)}


def greedy_text(client: openai.OpenAI, prompt: str) -> str:
    return client.completions.create(prompt=prompt, **GREEDY).choices[0].text


# -- the tiny model --------------------------------------------------------------------------------
def test_a_string_prompt(tiny: openai.OpenAI, prompt_tokens: dict[str, list[str]]) -> None:
    result = tiny.completions.create(prompt=PROMPT, **GREEDY)
    assert result.object == "text_completion" and result.id.startswith("cmpl-")
    assert result.model == TINY_MODEL
    (choice,) = result.choices
    assert choice.index == 0 and choice.text and choice.finish_reason == "length"
    assert choice.logprobs is None
    assert result.usage is not None
    assert result.usage.prompt_tokens == len(prompt_tokens[PROMPT])  # the prompt as it is: no chat template
    assert result.usage.completion_tokens == 5
    assert result.usage.total_tokens == result.usage.prompt_tokens + 5


def test_a_list_of_prompts_with_n_2(tiny: openai.OpenAI, prompt_tokens: dict[str, list[str]]) -> None:
    result = tiny.completions.create(prompt=[PROMPT, OTHER], n=2, **GREEDY)
    assert [c.index for c in result.choices] == [0, 1, 2, 3]  # prompt_index * n + i
    first, other = greedy_text(tiny, PROMPT), greedy_text(tiny, OTHER)
    assert [c.text for c in result.choices] == [first, first, other, other]
    assert result.usage is not None
    assert result.usage.prompt_tokens == len(prompt_tokens[PROMPT]) + len(prompt_tokens[OTHER])
    assert result.usage.completion_tokens == 4 * 5


def test_echo_puts_the_prompt_first(tiny: openai.OpenAI) -> None:
    choice = tiny.completions.create(prompt=PROMPT, echo=True, **GREEDY).choices[0]
    assert choice.text == PROMPT + greedy_text(tiny, PROMPT)


def test_logprobs(tiny: openai.OpenAI) -> None:
    choice = tiny.completions.create(prompt=PROMPT, logprobs=3, **GREEDY).choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs and logprobs.top_logprobs
    assert len(logprobs.tokens) == 5
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(5)]
    for token, logprob, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert logprob is not None and logprob <= 0
        assert top is not None and token in top and 3 <= len(top) <= 4  # the 3 likeliest and the chosen one
        assert logprob == pytest.approx(max(top.values()), abs=1e-4)  # greedy: the likeliest


def test_echo_with_logprobs_starts_with_the_prompt_tokens(
    tiny: openai.OpenAI, prompt_tokens: dict[str, list[str]]
) -> None:
    """What evaluation harnesses send to score a text: its tokens' logprobs, the first null."""
    choice = tiny.completions.create(prompt=PROMPT, echo=True, logprobs=1, **GREEDY).choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs and logprobs.text_offset
    assert logprobs.top_logprobs is not None
    count = len(prompt_tokens[PROMPT])
    assert logprobs.tokens[:count] == prompt_tokens[PROMPT]
    assert len(logprobs.tokens) == count + 5
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs[1:])
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset[count] == len(PROMPT)
    assert choice.text.startswith(PROMPT)


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream(tiny: openai.OpenAI, include_usage: bool) -> None:
    stream = tiny.completions.create(
        prompt=PROMPT, stream=True, stream_options={"include_usage": include_usage}, **GREEDY
    )
    chunks = list(stream)
    assert {c.object for c in chunks} == {"text_completion"}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    if include_usage:
        *chunks, last = chunks
        assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == greedy_text(tiny, PROMPT)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]
    assert len(chunks) >= 3, "text arrives as it is generated"


def test_a_stream_with_echo_and_logprobs_says_what_the_answer_says(tiny: openai.OpenAI) -> None:
    request: dict[str, Any] = GREEDY | {"prompt": [PROMPT, OTHER], "n": 2, "echo": True, "logprobs": 2}
    answer = tiny.completions.create(**request)
    streamed = _from_stream(list(tiny.completions.create(**request, stream=True)))
    for choice in answer.choices:
        assert choice.logprobs is not None
        mine = streamed[choice.index]
        assert (mine["text"], mine["finish_reason"]) == (choice.text, choice.finish_reason)
        assert (mine["tokens"], mine["text_offset"]) == (choice.logprobs.tokens, choice.logprobs.text_offset)
        assert mine["token_logprobs"] == pytest.approx(choice.logprobs.token_logprobs, abs=1e-4)


def test_stop(tiny: openai.OpenAI) -> None:
    text = tiny.completions.create(prompt=PROMPT, **(GREEDY | {"max_tokens": 12})).choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert len(stop) == 3, text
    choice = tiny.completions.create(prompt=PROMPT, stop=[stop], **(GREEDY | {"max_tokens": 12})).choices[0]
    assert choice.text == text[: text.index(stop)]
    assert choice.finish_reason == "stop"


ERRORS: list[Any] = [
    pytest.param({"suffix": "!"}, "suffix", "unsupported_parameter", id="suffix"),
    pytest.param({"prompt": [464, 3139]}, "prompt", "unsupported_parameter", id="token-ids"),
    pytest.param({"prompt": [[464, 3139], [12]]}, "prompt", "unsupported_parameter", id="token-id-lists"),
    pytest.param({"best_of": 3}, "best_of", "unsupported_parameter", id="best_of"),
    pytest.param({"extra_body": {"frobnicate": 1}}, "frobnicate", "unknown_parameter", id="unknown-field"),
    pytest.param({"logprobs": 21}, "logprobs", None, id="logprobs-over-20"),
    pytest.param({"n": 99}, "n", None, id="n-over-max"),
    pytest.param({"prompt": ""}, "prompt", None, id="empty-prompt"),
    pytest.param({"prompt": []}, "prompt", None, id="no-prompt"),
    pytest.param({"max_tokens": 100_000}, "prompt", "context_length_exceeded", id="context-length"),
]


@pytest.mark.parametrize(("fields", "param", "code"), ERRORS)
def test_bad_requests_are_400s_naming_the_field(
    tiny: openai.OpenAI, fields: dict[str, Any], param: str, code: str | None
) -> None:
    request: dict[str, Any] = {"model": TINY_MODEL, "prompt": PROMPT, "max_tokens": 2} | fields
    with pytest.raises(openai.BadRequestError) as caught:
        tiny.completions.create(**request)
    assert caught.value.param == param
    if code is not None:
        assert caught.value.code == code


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404(tiny: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        tiny.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT, stream=stream)
    assert caught.value.code == "model_not_found"


# -- exact shapes on the fake engine ---------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_sdk(fake_server: FakeServer) -> openai.OpenAI:
    return sdk(fake_server.base_url)


def test_logprobs_with_echo_in_openai_s_format(fake_sdk: openai.OpenAI, served_fake: FakeEngine) -> None:
    result = fake_sdk.completions.create(
        model=served_fake.model_name, prompt="Say it twice", echo=True, logprobs=2
    )
    (choice,) = result.choices
    assert choice.text == "Say it twiceHello, world"
    assert choice.logprobs is not None
    assert choice.logprobs.model_dump() == {
        "tokens": ["Say", " it", " twice", "Hello", ",", " world"],
        "token_logprobs": [
            None,
            FAKE_PROMPT_LOGPROB,
            FAKE_PROMPT_LOGPROB,
            FAKE_LOGPROB,
            FAKE_LOGPROB,
            FAKE_LOGPROB,
        ],
        "top_logprobs": [None]
        + [{"alt0": -1.0, "alt1": -2.0, t: FAKE_PROMPT_LOGPROB} for t in (" it", " twice")]
        + [{"alt0": -1.0, "alt1": -2.0, t: FAKE_LOGPROB} for t in ("Hello", ",", " world")],
        "text_offset": [0, 3, 6, 12, 17, 18],
    }


def test_logprobs_0_gives_the_chosen_token_only(fake_sdk: openai.OpenAI, served_fake: FakeEngine) -> None:
    choice = fake_sdk.completions.create(model=served_fake.model_name, prompt="Hi", logprobs=0).choices[0]
    assert choice.logprobs is not None
    assert choice.logprobs.top_logprobs == [
        {"Hello": FAKE_LOGPROB},
        {",": FAKE_LOGPROB},
        {" world": FAKE_LOGPROB},
    ]
    assert choice.logprobs.text_offset == [0, 5, 6]


def _from_stream(chunks: list[Any]) -> dict[int, dict[str, Any]]:
    """Each choice's text, finish and logprobs, put together from its chunks."""
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for c in chunk.choices:
            mine = choices.setdefault(
                c.index,
                {"text": "", "finish_reason": None, "tokens": [], "token_logprobs": [], "text_offset": []},
            )
            mine["text"] += c.text
            mine["finish_reason"] = c.finish_reason or mine["finish_reason"]
            if c.logprobs is not None:
                for name in ("tokens", "token_logprobs", "text_offset"):
                    mine[name] += getattr(c.logprobs, name)
    return choices


@pytest.mark.parametrize("echo", [False, True])
def test_a_stream_says_what_the_answer_says(
    fake_sdk: openai.OpenAI, served_fake: FakeEngine, echo: bool
) -> None:
    request: dict[str, Any] = {
        "model": served_fake.model_name,
        "prompt": ["Say it twice", "Once more"],
        "n": 2,
        "echo": echo,
        "logprobs": 1,
    }
    answer = fake_sdk.completions.create(**request)
    streamed = _from_stream(list(fake_sdk.completions.create(**request, stream=True)))
    assert sorted(streamed) == [0, 1, 2, 3]
    for choice in answer.choices:
        assert choice.logprobs is not None
        assert streamed[choice.index] == {
            "text": choice.text,
            "finish_reason": choice.finish_reason,
            "tokens": choice.logprobs.tokens,
            "token_logprobs": choice.logprobs.token_logprobs,
            "text_offset": choice.logprobs.text_offset,
        }
    assert answer.choices[2].text.startswith("Once more" if echo else "Hello")


async def test_the_engine_gets_each_prompt_as_it_is(fake_client: httpx.AsyncClient, fake: FakeEngine) -> None:
    body = {
        "model": fake.model_name,
        "prompt": ["one", "two"],
        "n": 2,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 7,
        "stop": "\n",
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"42": 5.5},
        "logprobs": 2,
        "echo": True,
        "user": "someone",
        "best_of": 2,
        "top_k": 20,
        "min_p": 0.1,
        "repetition_penalty": 1.1,
        "min_tokens": 1,
        "ignore_eos": True,
    }
    response = await fake_client.post(URL, json=body, headers={"x-request-id": "many"})
    assert response.status_code == 200, response.text
    first, second = fake.requests
    assert (first.prompt, second.prompt) == ("one", "two")
    assert first.messages == () and first.n == 2
    assert (first.request_id, second.request_id) == ("many-0", "many-1")
    s = first.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.seed, s.stop) == (
        16,
        0.5,
        0.9,
        7,
        ("\n",),
    )  # 16: OpenAI's
    assert (s.presence_penalty, s.frequency_penalty, s.logit_bias) == (0.5, -0.5, ((42, 5.5),))
    assert (s.logprobs, s.top_logprobs, s.prompt_logprobs) == (True, 2, True)
    assert (s.top_k, s.min_p, s.repetition_penalty, s.min_tokens, s.ignore_eos) == (20, 0.1, 1.1, 1, True)
    assert response.headers["x-loragate-department"] == "general"
    assert (
        response.headers["x-loragate-adapter"] == "base" and response.headers["x-loragate-template"] == "none"
    )
    usage = response.json()["usage"]
    assert usage == {"prompt_tokens": 2 * 7, "completion_tokens": 4 * 3, "total_tokens": 26}


async def test_logit_bias_keys_are_token_ids(fake_client: httpx.AsyncClient, fake: FakeEngine) -> None:
    body = {"model": fake.model_name, "prompt": "x", "logit_bias": {"the": 1}}
    assert_envelope(await fake_client.post(URL, json=body), 400, param="logit_bias")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_too_long_prompt_names_the_prompt(
    fake_client: httpx.AsyncClient, fake: FakeEngine, stream: bool
) -> None:
    fake.fail_at_start = ContextLengthError(
        "This model's maximum context length is 4096 tokens.", param="messages"
    )
    body = {"model": fake.model_name, "prompt": ["fine", "too long"], "stream": stream}
    response = await fake_client.post(URL, json=body)
    assert_envelope(response, 400, param="prompt", code="context_length_exceeded")


async def test_a_failure_mid_stream_is_an_error_event(
    fake_client: httpx.AsyncClient, fake: FakeEngine
) -> None:
    fake.fail_mid_stream = LoragateError("The engine failed while generating.")
    response = await fake_client.post(URL, json={"model": fake.model_name, "prompt": "x", "stream": True})
    assert response.status_code == 200
    events = sse_events(response.text)
    assert [e["choices"][0]["text"] for e in events[:-2]] == ["Hello"]
    assert events[-2]["error"]["message"] == "The engine failed while generating."
    assert events[-1] == "[DONE]"


class NoLogprobsEngine(FakeEngine):
    """An engine that ignores ``logprobs``: the gateway must not answer as if it had none to give."""

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        async for delta in super().stream(request):
            yield replace(delta, logprobs=None, prompt_logprobs=None)


@pytest.mark.parametrize("echo", [False, True])
async def test_logprobs_an_engine_did_not_give_are_a_500_not_an_empty_list(echo: bool) -> None:
    engine = NoLogprobsEngine()
    app = create_app(Settings(api_key=API_KEY, model_name=engine.model_name), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://g") as client:
            body = {"model": engine.model_name, "prompt": "x", "logprobs": 1, "echo": echo}
            response = await client.post(URL, json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert_envelope(response, 500)


async def test_metrics_count_every_prompt(fake_client: httpx.AsyncClient, fake: FakeEngine) -> None:
    def prompt_tokens(text: str) -> float:
        line = next(ln for ln in text.splitlines() if ln.startswith("loragate_prompt_tokens_total{"))
        return float(line.split()[-1])

    await fake_client.post(URL, json={"model": fake.model_name, "prompt": "warm-up"})
    before = prompt_tokens((await fake_client.get("/metrics")).text)
    response = await fake_client.post(URL, json={"model": fake.model_name, "prompt": ["a", "b", "c"], "n": 2})
    assert response.json()["usage"]["prompt_tokens"] == 3 * 7
    text = (await fake_client.get("/metrics")).text
    assert prompt_tokens(text) - before == 3 * 7
    assert (
        'loragate_requests_total{adapter="base",department="general",status="200",tenant="default"} 2.0'
        in text
    )


async def test_closing_a_merged_stream_closes_every_prompt_s_stream() -> None:
    closed: list[int] = []

    async def endless(index: int) -> AsyncGenerator[Delta, None]:
        try:
            while True:
                yield Delta(0, str(index))
                await asyncio.sleep(0.001)
        finally:
            closed.append(index)

    deltas = merged([endless(0), endless(1), endless(2)])
    assert (await anext(deltas))[1].text in {"0", "1", "2"}
    await deltas.aclose()
    assert sorted(closed) == [0, 1, 2]


# -- tenancy and adapters --------------------------------------------------------------------------
TENANTS = """
tenants:
  acme:
    default_department: it
    max_tokens: 3
    departments:
      it: {adapter: acme-it, template: acme/it}
      plain: {}
  globex:
    departments:
      sales: {adapter: globex-sales}
"""
TEMPLATE = {"acme/it.yaml": 'version: "1"\nsystem: "You are the IT assistant."\n'}


@pytest.fixture(scope="module")
def tenants_world(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[tuple[Any, FakeEngine]]:
    deployment = build_deployment(
        tmp_path_factory.mktemp("completions-tenants"),
        tiny_model_dir,
        tenants=TENANTS,
        templates=TEMPLATE,
        adapters=[("acme-it", "acme-it-lora", 1), ("globex-sales", "globex-lora", 2)],
    )
    keys = {who: deployment.keys.create(who)[1] for who in ("acme", "globex")}
    engine = FakeEngine(model_name=TINY_MODEL)
    app = create_app(deployment.settings, engine_factory=lambda _: engine)
    with LiveServer(app=app, ready_path="/health") as server:
        yield (server, keys), engine


def test_departments_adapters_and_caps_as_in_chat(tenants_world: tuple[Any, FakeEngine]) -> None:
    (server, keys), engine = tenants_world
    acme = sdk(server.base_url, keys["acme"])
    raw = acme.completions.with_raw_response.create(
        model=TINY_MODEL, prompt="My screen is black.", max_tokens=50
    )
    assert raw.headers["x-loragate-department"] == "it"
    assert raw.headers["x-loragate-adapter"] == "acme-it-lora@1"
    assert raw.headers["x-loragate-template"] == "none"  # L1 templates are chat messages: none here
    sent = engine.requests[-1]
    assert sent.prompt == "My screen is black." and sent.messages == ()
    assert sent.adapter == "acme-it-lora@1" and sent.sampling.max_tokens == 3  # the tenant's cap
    raw = acme.completions.with_raw_response.create(
        model=TINY_MODEL, prompt="x", extra_headers={"X-Department": "plain"}
    )
    assert raw.headers["x-loragate-adapter"] == "base"
    with pytest.raises(openai.PermissionDeniedError):
        acme.completions.create(model="globex-sales", prompt="x")
    with pytest.raises(openai.PermissionDeniedError):
        acme.completions.create(model=TINY_MODEL, prompt="x", extra_headers={"X-Department": "sales"})
    globex = sdk(server.base_url, keys["globex"])
    assert (
        globex.completions.with_raw_response.create(model="globex-sales", prompt="x").headers[
            "x-loragate-adapter"
        ]
        == "globex-lora@1"
    )


# -- a client that leaves --------------------------------------------------------------------------
HELD_FOR = 60  # seconds: a hang guard only


@pytest.fixture(scope="module")
def gated(tiny_settings: Settings) -> Iterator[tuple[LiveServer, Any]]:
    engine = gated_engine(tiny_settings, threading.Event(), hold_rows=2)  # both prompts of a request
    with LiveServer(app=create_app(tiny_settings, engine_factory=lambda _: engine)) as server:
        yield server, engine
        engine.gate.set()  # let anything left over finish


def test_a_client_that_leaves_aborts_every_prompt(gated: tuple[LiveServer, Any]) -> None:
    server, engine = gated
    body = {
        "model": TINY_MODEL,
        "prompt": [PROMPT, OTHER],
        "max_tokens": 900,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Request-Id": "left"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=HELD_FOR) as http:
        with http.stream("POST", "/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            assert engine.scheduler.holding.wait(HELD_FOR)
    base = server.base_url.removesuffix("/v1")
    deadline = HELD_FOR
    while deadline > 0:
        ready = httpx.get(f"{base}/ready", timeout=5).json()
        if ready["running"] + ready["waiting"] == 0:
            break
        threading.Event().wait(0.05)
        deadline -= 0.05
    assert {"left-0", "left-1"} <= engine.scheduler.aborted
