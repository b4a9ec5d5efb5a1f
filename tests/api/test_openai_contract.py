"""The contract: the real ``openai`` SDK against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import openai
import pytest

from service.errors import LoragateError
from tests.api.conftest import FakeServer
from tests.conftest import API_KEY, TINY_MODEL, LiveServer
from tests.fakes import FakeEngine

MESSAGES: list[Any] = [{"role": "user", "content": "Say something."}]


def sdk(base_url: str, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def openai_client(live_server: LiveServer) -> openai.OpenAI:
    return sdk(live_server.base_url)


def test_non_streaming(openai_client: openai.OpenAI) -> None:
    result = openai_client.chat.completions.create(model=TINY_MODEL, messages=MESSAGES, max_tokens=3)
    assert result.object == "chat.completion"
    assert result.model == TINY_MODEL
    (choice,) = result.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert result.usage is not None
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


@pytest.mark.parametrize("include_usage", [False, True])
def test_streaming(openai_client: openai.OpenAI, include_usage: bool) -> None:
    stream = openai_client.chat.completions.create(
        model=TINY_MODEL,
        messages=MESSAGES,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": include_usage},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["length"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    if include_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 4
    else:
        assert all(c.usage is None for c in chunks)


def test_n_2(openai_client: openai.OpenAI) -> None:
    result = openai_client.chat.completions.create(model=TINY_MODEL, messages=MESSAGES, max_tokens=2, n=2)
    assert sorted(c.index for c in result.choices) == [0, 1]
    assert result.usage is not None and result.usage.completion_tokens <= 4


def test_stop(openai_client: openai.OpenAI) -> None:
    greedy: dict[str, Any] = {"model": TINY_MODEL, "messages": MESSAGES, "max_tokens": 10, "temperature": 0}
    text = openai_client.chat.completions.create(**greedy).choices[0].message.content or ""
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert len(stop) == 3, text
    choice = openai_client.chat.completions.create(**greedy, stop=[stop]).choices[0]
    assert choice.message.content == text[: text.index(stop)]
    assert choice.finish_reason == "stop"


def test_max_tokens_gives_length(openai_client: openai.OpenAI) -> None:
    result = openai_client.chat.completions.create(
        model=TINY_MODEL, messages=MESSAGES, max_completion_tokens=2, extra_body={"ignore_eos": True}
    )
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None and result.usage.completion_tokens == 2


ERRORS: list[Any] = [
    pytest.param({"temperature": 9}, {}, openai.BadRequestError, 400, id="bad-param"),
    pytest.param({"n": 99}, {}, openai.BadRequestError, 400, id="n-over-max"),
    pytest.param({"max_tokens": 100_000}, {}, openai.BadRequestError, 400, id="context-length"),
    pytest.param({}, {"api_key": "sk-wrong"}, openai.AuthenticationError, 401, id="wrong-key"),
    pytest.param({"model": "gpt-4o"}, {}, openai.NotFoundError, 404, id="unknown-model"),
    pytest.param(
        {"model": "gpt-4o", "stream": True}, {}, openai.NotFoundError, 404, id="unknown-model-stream"
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": "x" * 1_100_000}]},
        {},
        openai.APIStatusError,
        413,
        id="too-large",
    ),
]


@pytest.mark.parametrize(("fields", "client_kwargs", "error_class", "status"), ERRORS)
def test_errors_raise_the_sdk_class(
    live_server: LiveServer, fields: dict, client_kwargs: dict, error_class: type, status: int
) -> None:
    request: dict[str, Any] = {"model": TINY_MODEL, "messages": MESSAGES, "max_tokens": 2} | fields
    with pytest.raises(error_class) as caught:
        sdk(live_server.base_url, **client_kwargs).chat.completions.create(**request)
    assert caught.value.status_code == status
    assert caught.value.response.headers["x-request-id"]
    assert isinstance(caught.value.body, dict) and caught.value.body["message"]


@pytest.fixture(scope="module")
def fake_sdk(fake_server: FakeServer) -> openai.OpenAI:
    return sdk(fake_server.base_url)


def test_not_ready_raises_internal_server_error(fake_sdk: openai.OpenAI, served_fake: FakeEngine) -> None:
    served_fake.ready = False
    with pytest.raises(openai.InternalServerError) as caught:
        fake_sdk.chat.completions.create(model=served_fake.model_name, messages=MESSAGES)
    assert caught.value.status_code == 503
    assert caught.value.code == "engine_not_ready"


def test_unexpected_failure_raises_internal_server_error(
    fake_sdk: openai.OpenAI, served_fake: FakeEngine
) -> None:
    served_fake.fail_at_start = RuntimeError("secret detail")
    with pytest.raises(openai.InternalServerError) as caught:
        fake_sdk.chat.completions.create(model=served_fake.model_name, messages=MESSAGES)
    assert caught.value.status_code == 500
    assert "secret detail" not in caught.value.response.text


def test_failure_mid_stream_raises_api_error(fake_sdk: openai.OpenAI, served_fake: FakeEngine) -> None:
    served_fake.fail_mid_stream = LoragateError("The engine failed while generating.")
    stream = fake_sdk.chat.completions.create(model=served_fake.model_name, messages=MESSAGES, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError, match="The engine failed while generating."):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["", "Hello"]


def running(base: str) -> int:
    health = httpx.get(f"{base}/ready", timeout=5).json()
    return int(health["running"]) + int(health["waiting"])


def wait_idle(base: str, within: float) -> float:
    started = time.monotonic()
    while running(base) != 0:
        assert time.monotonic() - started < within, "the engine kept generating for a client that left"
        time.sleep(0.05)
    return time.monotonic() - started


LONG = {"model": TINY_MODEL, "messages": MESSAGES, "max_tokens": 900, "ignore_eos": True}  # ~a minute of work


@pytest.fixture
def long_request() -> dict[str, Any]:
    """A request that is still generating when the client leaves (modules on a faster engine override it)."""
    return LONG


def test_stream_disconnect_aborts_generation(live_server: LiveServer, long_request: dict[str, Any]) -> None:
    base = live_server.base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=live_server.base_url, headers=headers, timeout=30) as http:
        with http.stream("POST", "/chat/completions", json=long_request | {"stream": True}) as response:
            lines = response.iter_lines()
            assert [next(line for line in lines if line.startswith("data: ")) for _ in range(3)]
            assert running(base) == 1
    wait_idle(base, within=3)


def test_non_streaming_disconnect_aborts_generation(live_server: LiveServer) -> None:
    base = live_server.base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    outcome: list[BaseException] = []

    def impatient_client() -> None:
        try:
            httpx.post(f"{live_server.base_url}/chat/completions", json=LONG, headers=headers, timeout=3)
        except httpx.TimeoutException as exc:  # expected: it hangs up after 3 s
            outcome.append(exc)

    thread = threading.Thread(target=impatient_client)
    thread.start()
    seen_running = False
    while thread.is_alive() and not seen_running:
        seen_running = running(base) > 0
        time.sleep(0.02)
    thread.join()
    assert seen_running, "the request never started"
    assert len(outcome) == 1
    wait_idle(base, within=3)
