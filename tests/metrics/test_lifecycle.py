"""In-flight requests while they run, queue time, and a stream whose client goes away."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from service.api.chat import CHAT_PATH
from service.middleware import GatewayMiddleware, MetricsMiddleware

from .conftest import AUTH, GatedEngine, fake_app
from .helpers import CHAT_URL, Scrape, scrape

ROUTE = {"tenant": "default", "department": "general", "adapter": "base"}
IN_FLIGHT = {"tenant": "default", "department": "general"}


async def until(gateway: httpx.AsyncClient, check: Any) -> Scrape:
    for _ in range(200):
        out = await scrape(gateway)
        if check(out):
            return out
        await asyncio.sleep(0.01)
    raise AssertionError("the metrics never showed the expected state")


@pytest.mark.parametrize("stream", [False, True])
async def test_in_flight_while_running_then_back_to_zero(stream: bool) -> None:
    engine = GatedEngine()
    app = fake_app(engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as gateway:
            body = {
                "model": engine.model_name,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": stream,
            }
            pending = [asyncio.create_task(gateway.post(CHAT_URL, json=body, headers=AUTH)) for _ in range(2)]
            during = await until(
                gateway, lambda out: out.get("loragate_requests_in_flight", **IN_FLIGHT) == 2
            )
            assert during.sum("loragate_requests_total") == 0, "counted when over, not before"
            assert during.get("loragate_queue_time_seconds_count", **ROUTE) == 2
            assert during.get("loragate_queue_time_seconds_sum", **ROUTE) == pytest.approx(0.4)
            engine.gate.set()
            assert all(r.status_code == 200 for r in await asyncio.gather(*pending))
            after = await scrape(gateway)
    assert after.get("loragate_requests_in_flight", **IN_FLIGHT) == 0
    assert after.get("loragate_requests_total", **ROUTE, status="200") == 2
    assert after.get("loragate_completion_tokens_total", **ROUTE) == 2


class Client:
    """Drives the ASGI app by hand: sends the request, then disconnects after the first event."""

    def __init__(self, body: dict[str, Any], spec_version: str, engine: GatedEngine):
        self.body = json.dumps(body).encode()
        self.engine = engine
        self.spec_version = spec_version
        self.gone = asyncio.Event()
        self.sent: list[dict[str, Any]] = []
        self.requested = False

    def scope(self) -> dict[str, Any]:
        headers = [(k.lower().encode(), v.encode()) for k, v in AUTH.items()]
        headers.append((b"content-type", b"application/json"))
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": self.spec_version},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": CHAT_URL,
            "raw_path": CHAT_URL.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 1234),
            "server": ("gateway", 80),
        }

    async def receive(self) -> dict[str, Any]:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.gone.is_set():
            raise OSError("the client is gone")  # what ASGI 2.4 servers do
        self.sent.append(message)
        if message["type"] == "http.response.body" and b"Hello" in message.get("body", b""):
            self.gone.set()
            if self.spec_version >= "2.4":  # a server learns of it at the next send: let the engine go on
                self.engine.gate.set()


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])  # disconnect by receive(), or by a failing send()
async def test_a_stream_abandoned_by_its_client_is_recorded(spec_version: str) -> None:
    engine = GatedEngine()
    app = fake_app(engine)
    body = {"model": engine.model_name, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with app.router.lifespan_context(app):
        client = Client(body, spec_version, engine)
        running = asyncio.wait_for(app(client.scope(), client.receive, client.send), timeout=10)
        await running  # a client that leaves is the end of the response, not an error
        if spec_version == "2.3":
            assert not engine.gate.is_set() and engine.aborted == 1, "the engine's work was aborted"
        assert client.sent[0]["status"] == 200
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as gateway:
            out = await scrape(gateway)
    assert out.get("loragate_requests_total", **ROUTE, status="200") == 1
    assert out.get("loragate_requests_in_flight", **IN_FLIGHT) == 0
    assert out.get("loragate_request_duration_seconds_count", **ROUTE) == 1
    assert out.get("loragate_time_to_first_token_seconds_count", **ROUTE) == 1


class StuckClient(Client):
    """A client that leaves while a chunk is being written to it (its socket buffer is full)."""

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and b"Hello" in message.get("body", b""):
            self.gone.set()
            await asyncio.Event().wait()  # never drains: only the disconnect ends this send


async def test_a_stream_abandoned_during_a_send_aborts_the_engine_before_the_response_returns() -> None:
    engine = GatedEngine()
    app = fake_app(engine)
    body = {"model": engine.model_name, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with app.router.lifespan_context(app):
        client = StuckClient(body, "2.3", engine)
        await asyncio.wait_for(app(client.scope(), client.receive, client.send), timeout=10)
        # No await since: the generator was closed by the response, not left to the garbage collector
        assert engine.aborted == 1 and not engine.gate.is_set()


def test_metrics_wrap_the_chat_route_outside_its_error_handling() -> None:
    stack = fake_app(GatedEngine()).api.stacks[CHAT_PATH]
    assert isinstance(stack, MetricsMiddleware), "outermost: it sees the 413s and 500s others send"
    assert isinstance(stack.app, GatewayMiddleware)
