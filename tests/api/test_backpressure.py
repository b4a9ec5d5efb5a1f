"""Backpressure: an engine holds at most what it runs at once plus ``max_queued_requests`` generating
requests (``service/admission.py``); the next one gets a fast 429 while the others wait, and nothing
past the bound reaches the engine. The gated tiny model (``tests.gates``) keeps requests in flight.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from service.app import create_app
from service.config import Settings
from tests.api.helpers import CHAT_URL, assert_envelope, chat_body, sse_events
from tests.conftest import API_KEY, TINY_MODEL, LiveServer, make_settings
from tests.gates import GatedEngine, gated_engine

BATCH, QUEUE = 2, 1  # the engine runs 2 at once and may queue 1 more: 3 in flight, the 4th is refused
HELD_FOR = 60  # seconds: a hang guard only
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Held after its first delta while the gate is clear; a few tokens once it opens.
HELD = chat_body(max_tokens=12, ignore_eos=True, stream=True)
FAST = 1.0  # seconds: a refusal is an answer from the gateway alone, never a wait in a queue


def bounded_settings(model_dir: Path) -> Settings:
    return make_settings(model_dir, max_batch_size=BATCH, max_n=BATCH, max_queued_requests=QUEUE)


@pytest.fixture(scope="module")
def gated(tiny_model_dir: Path) -> Iterator[tuple[LiveServer, GatedEngine]]:
    settings = bounded_settings(tiny_model_dir)
    engine = gated_engine(settings, threading.Event())
    with LiveServer(app=create_app(settings, engine_factory=lambda _: engine)) as server:
        yield server, engine
        engine.gate.set()


@pytest.fixture
async def http(gated: tuple[LiveServer, GatedEngine]) -> AsyncIterator[httpx.AsyncClient]:
    server, engine = gated
    base = server.base_url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=HELD_FOR) as client:
        await until(client, lambda ready: ready["in_flight"]["engine"] == 0)  # an earlier test's are done
        engine.gate.clear()
        yield client
        engine.gate.set()  # let anything left over finish


async def until(http: httpx.AsyncClient, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """``/ready``'s body, once ``condition`` holds for it."""
    deadline = time.monotonic() + HELD_FOR
    while not condition(ready := (await http.get("/ready")).json()):
        assert time.monotonic() < deadline, f"never: {ready}"
        await asyncio.sleep(0.02)
    return ready


def all_in_the_engine(ready: dict[str, Any]) -> bool:
    """The gateway's bound is reached, and each of its requests is running or waiting in the engine."""
    return bool(ready["in_flight"]["engine"] == ready["running"] + ready["waiting"] == BATCH + QUEUE)


async def stream(http: httpx.AsyncClient, request_id: str) -> list[Any]:
    async with http.stream("POST", CHAT_URL, json=HELD, headers={"x-request-id": request_id}) as response:
        assert response.status_code == 200
        return sse_events((await response.aread()).decode())


async def test_past_the_bound_a_fast_429_while_the_others_wait(
    gated: tuple[LiveServer, GatedEngine], http: httpx.AsyncClient
) -> None:
    _, engine = gated
    streams = [asyncio.ensure_future(stream(http, f"held-{i}")) for i in range(BATCH + QUEUE)]
    await until(http, all_in_the_engine)

    started = time.monotonic()
    refused = await http.post(CHAT_URL, json=HELD)
    assert time.monotonic() - started < FAST
    error = assert_envelope(refused, 429, code="server_overloaded")
    assert error["type"] == "overloaded_error"
    assert refused.headers["retry-after"] == "1"
    completion = {"model": TINY_MODEL, "prompt": "Once", "max_tokens": 2}
    assert_envelope(await http.post("/v1/completions", json=completion), 429, code="server_overloaded")

    # A flood while full: every request refused at once, none queued anywhere.
    started = time.monotonic()
    flood = await asyncio.gather(*(http.post(CHAT_URL, json=HELD) for _ in range(40)))
    assert {response.status_code for response in flood} == {429}
    assert time.monotonic() - started < 5 * FAST
    assert all_in_the_engine((await http.get("/ready")).json())  # the engine never saw the refused ones

    engine.gate.set()
    for events in await asyncio.gather(*streams):  # the held ones were never disturbed
        assert events[-1] == "[DONE]" and not any("error" in e for e in events[:-1])
    await until(http, lambda ready: ready["in_flight"]["engine"] == 0)
    assert (await http.post(CHAT_URL, json=chat_body())).status_code == 200  # room again


async def test_the_sdk_raises_rate_limit_error(
    gated: tuple[LiveServer, GatedEngine], http: httpx.AsyncClient
) -> None:
    server, _ = gated
    streams = [asyncio.ensure_future(stream(http, f"sdk-{i}")) for i in range(BATCH + QUEUE)]
    await until(http, all_in_the_engine)
    sdk = openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        await sdk.chat.completions.create(model=TINY_MODEL, messages=HELD["messages"], max_tokens=2)
    assert refused.value.code == "server_overloaded"
    await sdk.close()
    gated[1].gate.set()
    await asyncio.gather(*streams)


async def test_requests_that_fail_early_give_their_place_back(
    gated: tuple[LiveServer, GatedEngine], http: httpx.AsyncClient
) -> None:
    """A 400, a 404 and a client that left free their place: the count cannot leak."""
    gated[1].gate.set()
    for _ in range(BATCH + QUEUE + 1):
        assert (await http.post(CHAT_URL, json=chat_body(temperature=-1))).status_code == 400
        assert (await http.post(CHAT_URL, json=chat_body(model="no-such-model"))).status_code == 404
        assert (await http.post(CHAT_URL, content=b"{")).status_code == 400
    with pytest.raises(httpx.ReadTimeout):
        await http.post(CHAT_URL, json=chat_body(max_tokens=400, ignore_eos=True), timeout=0.05)
    await until(http, lambda ready: ready["in_flight"]["engine"] == 0)
    assert (await http.post(CHAT_URL, json=chat_body())).status_code == 200


async def test_a_slow_sender_holds_a_connection_not_a_place(
    gated: tuple[LiveServer, GatedEngine], http: httpx.AsyncClient
) -> None:
    """Admission comes once the body is in: a body still arriving takes nothing from the engine's bound."""
    server, _ = gated
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {API_KEY}\r\n"
        "content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"
    )
    slow = []
    for _ in range(BATCH + QUEUE + 1):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head.encode())
        slow.append(writer)
    await asyncio.sleep(0.2)
    assert (await http.get("/ready")).json()["in_flight"]["engine"] == 0
    gated[1].gate.set()
    assert (await http.post(CHAT_URL, json=chat_body())).status_code == 200
    for writer in slow:
        writer.close()
