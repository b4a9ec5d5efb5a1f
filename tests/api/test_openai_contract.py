"""The contract: the real ``openai`` SDK against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from service.app import create_app
from service.config import Settings
from service.errors import LoragateError
from tests.api.conftest import FakeServer
from tests.conftest import API_KEY, TINY_MODEL, LiveServer
from tests.fakes import FakeEngine
from tests.gates import GatedEngine, GatedScheduler, gated_engine

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


# Room to be held: the gate holds a request after its first delta, and nothing ends it before 900 tokens.
LONG = {"model": TINY_MODEL, "messages": MESSAGES, "max_tokens": 900, "ignore_eos": True}
HELD_FOR = 60  # seconds: a hang guard only; with the gate clear, nothing ends a request but an abort


@dataclass
class GatedServer:
    server: LiveServer
    engine: GatedEngine

    @property
    def base(self) -> str:
        return self.server.base_url.removesuffix("/v1")

    @property
    def scheduler(self) -> GatedScheduler:
        assert self.engine.scheduler is not None
        return self.engine.scheduler


@pytest.fixture(scope="module")
def gated_server(tiny_settings: Settings) -> Iterator[GatedServer]:
    """A live server on the tiny model whose decoding the test holds (``tests.gates``)."""
    engine = gated_engine(tiny_settings, threading.Event())
    with LiveServer(app=create_app(tiny_settings, engine_factory=lambda _: engine)) as server:
        yield GatedServer(server, engine)


@pytest.fixture
def held(gated_server: GatedServer) -> Iterator[GatedServer]:
    """The gated server, its gate clear: its requests stay running until they are aborted."""
    wait_idle(gated_server.base, within=HELD_FOR)  # what an earlier test left (if it failed) runs out
    gated_server.engine.gate.clear()
    yield gated_server
    gated_server.engine.gate.set()  # let anything left over finish


def test_stream_disconnect_aborts_generation(held: GatedServer) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Request-Id": "stream-left"}
    with httpx.Client(base_url=held.server.base_url, headers=headers, timeout=HELD_FOR) as http:
        with http.stream("POST", "/chat/completions", json=LONG | {"stream": True}) as response:
            assert response.status_code == 200
            lines = response.iter_lines()  # kept: a dropped iterator closes the connection
            assert next(line for line in lines if line.startswith("data: "))
            assert held.scheduler.holding.wait(HELD_FOR)
            assert running(held.base) == 1
    wait_idle(held.base, within=HELD_FOR)  # with the gate still clear: only the abort could end it
    assert "stream-left" in held.scheduler.aborted


def test_non_streaming_disconnect_aborts_generation(held: GatedServer) -> None:
    body = json.dumps(LONG).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {API_KEY}\r\nx-request-id: non-streaming-left\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", held.server.port), timeout=HELD_FOR) as client:
        client.sendall(head.encode() + body)
        assert held.scheduler.holding.wait(HELD_FOR)
        assert running(held.base) == 1
    # the client hung up before its answer (it cannot have come: the gate holds the request)
    wait_idle(held.base, within=HELD_FOR)  # with the gate still clear: only the abort could end it
    assert "non-streaming-left" in held.scheduler.aborted
