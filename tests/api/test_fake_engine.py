"""Gateway paths that need a scripted engine: not ready, failures before and during a stream."""

from __future__ import annotations

import httpx
import pytest

from service.engines.base import Engine
from service.errors import ContextLengthError, LoragateError, RateLimitError
from tests.api.helpers import CHAT_URL, assert_envelope, sse_events
from tests.fakes import FakeEngine

SECRET = "password=hunter2"  # text of an unexpected exception: it must never reach the client


def body(**fields: object) -> dict[str, object]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]} | fields


def test_fake_is_an_engine() -> None:
    assert isinstance(FakeEngine(), Engine)


async def test_scripted_completion(fake_client: httpx.AsyncClient, fake: FakeEngine) -> None:
    response = await fake_client.post(CHAT_URL, json=body(n=2))
    assert response.status_code == 200
    result = response.json()
    assert [c["message"]["content"] for c in result["choices"]] == ["Hello, world"] * 2
    assert [c["finish_reason"] for c in result["choices"]] == ["stop"] * 2
    assert result["usage"] == {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}
    assert fake.aborted == 0


async def test_request_reaches_the_engine_as_asked(fake_client: httpx.AsyncClient, fake: FakeEngine) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": None},
    ]
    fields = {"max_completion_tokens": 9, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": "END", "n": 2}
    extras = {"top_k": 7, "min_p": 0.1, "repetition_penalty": 1.1, "min_tokens": 2, "ignore_eos": True}
    response = await fake_client.post(
        CHAT_URL, json=body(messages=messages, **fields, **extras), headers={"x-request-id": "abc"}
    )
    assert response.status_code == 200
    (request,) = fake.requests
    assert request.request_id == "abc"
    assert request.n == 2 and request.adapter is None
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."),
        ("user", "Hi there"),
        ("assistant", ""),
    ]
    s = request.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.seed, s.stop) == (9, 0.5, 0.9, 3, ("END",))
    assert (s.top_k, s.min_p, s.repetition_penalty, s.min_tokens, s.ignore_eos) == (7, 0.1, 1.1, 2, True)


async def test_defaults_reach_the_engine(fake_client: httpx.AsyncClient, fake: FakeEngine) -> None:
    assert (await fake_client.post(CHAT_URL, json=body(top_k=-1))).status_code == 200
    s = fake.requests[0].sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.seed, s.stop) == (512, 1.0, 1.0, 0, None, ())


@pytest.mark.parametrize("stream", [False, True])
async def test_not_ready_is_503(fake_client: httpx.AsyncClient, fake: FakeEngine, stream: bool) -> None:
    fake.ready = False
    ready = await fake_client.get("/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
    assert (await fake_client.get("/health")).status_code == 200
    response = await fake_client.post(CHAT_URL, json=body(stream=stream))
    error = assert_envelope(response, 503, code="engine_not_ready")
    assert error["type"] == "service_unavailable"


FAILURES = [
    pytest.param(RuntimeError(SECRET), 500, "internal_error", id="unexpected"),
    pytest.param(
        ContextLengthError("too long", param="messages"), 400, "invalid_request_error", id="typed-400"
    ),
    pytest.param(RateLimitError("slow down"), 429, "rate_limit_exceeded", id="typed-429"),
]


@pytest.mark.parametrize(("failure", "status", "kind"), FAILURES)
@pytest.mark.parametrize("stream", [False, True])
async def test_failure_before_the_first_token_is_an_http_error(
    fake_client: httpx.AsyncClient, fake: FakeEngine, failure: Exception, status: int, kind: str, stream: bool
) -> None:
    fake.fail_at_start = failure
    response = await fake_client.post(CHAT_URL, json=body(stream=stream), headers={"x-request-id": "r-1"})
    error = assert_envelope(response, status, param=getattr(failure, "param", None))
    assert error["type"] == kind
    assert response.headers["x-request-id"] == "r-1"
    assert SECRET not in response.text


MID_STREAM = [
    pytest.param(
        LoragateError("The engine failed while generating."),
        "The engine failed while generating.",
        id="typed",
    ),
    pytest.param(RuntimeError(SECRET), "The server failed while streaming this response.", id="unexpected"),
]


@pytest.mark.parametrize(("failure", "message"), MID_STREAM)
async def test_failure_mid_stream_is_an_error_event_then_done(
    fake_client: httpx.AsyncClient, fake: FakeEngine, failure: Exception, message: str
) -> None:
    fake.fail_mid_stream = failure
    response = await fake_client.post(CHAT_URL, json=body(stream=True))
    assert response.status_code == 200  # the headers were sent before the failure
    events = sse_events(response.text)
    assert [e["choices"][0]["delta"] for e in events[:2]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hello"},
    ]
    assert events[2] == {"error": {"message": message, "type": "internal_error", "param": None, "code": None}}
    assert events[3:] == ["[DONE]"]
    assert SECRET not in response.text
    assert fake.aborted == 1


async def test_failure_mid_completion_is_a_500(fake_client: httpx.AsyncClient, fake: FakeEngine) -> None:
    fake.fail_mid_stream = RuntimeError(SECRET)
    response = await fake_client.post(CHAT_URL, json=body())
    assert_envelope(response, 500)
    assert SECRET not in response.text


async def test_finish_reason_and_usage_come_from_the_engine(
    fake_client: httpx.AsyncClient, fake: FakeEngine
) -> None:
    fake.script, fake.finish_reason = ("a", "b", "c", "d"), "length"
    response = await fake_client.post(
        CHAT_URL, json=body(stream=True, stream_options={"include_usage": True})
    )
    events = sse_events(response.text)
    assert events[-3]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert events[-2]["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
