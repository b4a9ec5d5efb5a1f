"""Deadlines (``service/admission.py``): no first delta within ``first_token_timeout``, or no whole
answer within ``request_timeout``, aborts the engine's work; the client gets 504, or, once its
stream has begun, an error event and ``[DONE]``.

The gated tiny model (``tests.gates``) holds a request after its first delta while its gate is
clear, and admits nothing meanwhile: a request queued behind a held one has no first delta.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.config import Settings
from tests.api.helpers import assert_envelope, chat_body, sse_events
from tests.conftest import API_KEY, TINY_MODEL, LiveServer, make_settings
from tests.fakes import FakeEngine
from tests.gates import GatedEngine, GatedScheduler, gated_engine

FIRST_TOKEN, WHOLE = 1.0, 3.0  # seconds: first_token_timeout, request_timeout
SLACK = 1.5  # seconds a deadline's answer may come late on a busy machine
HELD_FOR = 60  # seconds: a hang guard only
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ROUTES = {
    "chat": ("/v1/chat/completions", chat_body(max_tokens=4, ignore_eos=True)),
    "completions": ("/v1/completions", {"model": TINY_MODEL, "prompt": "Once upon", "max_tokens": 4}),
}


@pytest.fixture(scope="module")
def gated(tiny_model_dir: Path) -> Iterator[tuple[LiveServer, GatedEngine]]:
    settings = make_settings(tiny_model_dir, first_token_timeout=FIRST_TOKEN, request_timeout=WHOLE)
    engine = gated_engine(settings, threading.Event())
    with LiveServer(app=create_app(settings, engine_factory=lambda _: engine)) as server:
        yield server, engine
        engine.gate.set()


@pytest.fixture
def http(gated: tuple[LiveServer, GatedEngine]) -> Iterator[httpx.Client]:
    """A client of the gated server, its gate clear: a request is held after its first delta."""
    server, engine = gated
    with httpx.Client(base_url=server.base_url.removesuffix("/v1"), headers=AUTH, timeout=HELD_FOR) as client:
        idle(client)
        engine.gate.clear()
        yield client
        engine.gate.set()


def scheduler(gated: tuple[LiveServer, GatedEngine]) -> GatedScheduler:
    held = gated[1].scheduler
    assert held is not None
    return held


def idle(http: httpx.Client) -> None:
    deadline = time.monotonic() + HELD_FOR
    while (ready := http.get("/ready").json())["in_flight"]["engine"] or ready["running"] or ready["waiting"]:
        assert time.monotonic() < deadline, f"still busy: {ready}"
        time.sleep(0.02)


def until_aborted(held: GatedScheduler, request_id: str) -> None:
    deadline = time.monotonic() + HELD_FOR
    while request_id not in held.aborted:
        assert time.monotonic() < deadline, f"{request_id} was never aborted"
        time.sleep(0.02)


def hold(http: httpx.Client, held: GatedScheduler, request_id: str) -> threading.Thread:
    """A streamed chat request, held in the engine after its first delta (its body read in a thread)."""
    body = ROUTES["chat"][1] | {"stream": True}
    thread = threading.Thread(
        target=lambda: http.post("/v1/chat/completions", json=body, headers={"x-request-id": request_id})
    )
    thread.start()
    assert held.holding.wait(HELD_FOR), "the request was never held"
    return thread


@pytest.mark.parametrize(("route", "stream"), [("chat", True), ("chat", False), ("completions", True)])
def test_no_first_token_in_time_is_a_504_and_the_work_is_aborted(
    gated: tuple[LiveServer, GatedEngine], http: httpx.Client, route: str, stream: bool
) -> None:
    held = scheduler(gated)
    ahead = hold(http, held, f"ahead-{route}-{stream}")
    path, body = ROUTES[route]
    request_id = f"first-{route}-{stream}"
    started = time.monotonic()
    response = http.post(path, json=body | {"stream": stream}, headers={"x-request-id": request_id})
    waited = time.monotonic() - started
    error = assert_envelope(response, 504, code="timeout")  # a plain HTTP error, before any stream
    assert error["type"] == "timeout_error" and "first_token_timeout" in error["message"]
    assert FIRST_TOKEN <= waited < FIRST_TOKEN + SLACK
    gated[1].gate.set()  # the one ahead finishes; the next turn drops the timed-out one unrun
    ahead.join(HELD_FOR)
    until_aborted(held, request_id)
    idle(http)


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_a_stream_past_request_timeout_ends_with_an_error_event_and_done(
    gated: tuple[LiveServer, GatedEngine], http: httpx.Client, route: str
) -> None:
    path, body = ROUTES[route]
    request_id = f"whole-stream-{route}"
    started = time.monotonic()
    with http.stream("POST", path, json=body | {"stream": True}, headers={"x-request-id": request_id}) as r:
        assert r.status_code == 200
        events = sse_events(r.read().decode())
    waited = time.monotonic() - started
    assert WHOLE <= waited < WHOLE + SLACK
    assert events[-1] == "[DONE]"
    error: dict[str, Any] = events[-2]["error"]
    assert (error["type"], error["code"]) == ("timeout_error", "timeout")
    assert "request_timeout" in error["message"]
    assert all("choices" in e for e in events[:-2])  # what came before the deadline
    until_aborted(scheduler(gated), request_id)
    idle(http)


def test_a_non_streamed_answer_past_request_timeout_is_a_504(
    gated: tuple[LiveServer, GatedEngine], http: httpx.Client
) -> None:
    started = time.monotonic()
    response = http.post(
        "/v1/chat/completions", json=ROUTES["chat"][1], headers={"x-request-id": "whole-json"}
    )
    assert WHOLE <= time.monotonic() - started < WHOLE + SLACK
    error = assert_envelope(response, 504, code="timeout")
    assert "request_timeout" in error["message"]
    until_aborted(scheduler(gated), "whole-json")
    idle(http)


def test_embeddings_have_the_whole_request_deadline() -> None:
    """An embeddings upstream that never answers (a socket that is never accepted from): 504 in time."""
    engine = FakeEngine()
    with socket.create_server(("127.0.0.1", 0)) as silent:
        settings = Settings(
            api_key=API_KEY,
            model_name=engine.model_name,
            embeddings_upstream=f"http://127.0.0.1:{silent.getsockname()[1]}",
            embeddings_model="tiny-embed",
            request_timeout=1.0,
        )
        app = create_app(settings, engine_factory=lambda _: engine)
        with LiveServer(app=app, ready_path="/health") as server:
            started = time.monotonic()
            response = httpx.post(
                f"{server.base_url}/embeddings",
                json={"model": "tiny-embed", "input": "hello"},
                headers=AUTH,
                timeout=HELD_FOR,
            )
            assert 1.0 <= time.monotonic() - started < 1.0 + SLACK
            assert_envelope(response, 504, code="timeout")
            ready = httpx.get(f"{server.base_url.removesuffix('/v1')}/ready", timeout=5).json()
            assert ready["in_flight"]["embeddings"] == 0
