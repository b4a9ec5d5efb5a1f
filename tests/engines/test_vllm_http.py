"""The vLLM backend's real HTTP clients (``http1``, and httpx's pool) against a live stand-in server.

The scripted replicas (``fake_vllm``) check the backend's logic; these check against a real
ASGI server (uvicorn, in a thread) what the ``UpstreamClient``s must do alike: the connection
is reused between requests (the [DONE] release), a closed stream closes it (so vLLM aborts),
a refused replica is failed over, and a stalled stream times out.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from service.domain import ChatMessage, Delta, GenerationRequest, SamplingParams
from service.engines.vllm.engine import VllmEngine
from service.engines.vllm.http1 import Http1Transport
from service.engines.vllm.upstream import HttpxUpstream, UpstreamClient
from service.errors import UpstreamError
from tests.conftest import LiveServer, free_port

BASE = "stand-in-base"


@dataclass
class Seen:
    """What the stand-in saw: the client port of each chat request, and the streams cut short."""

    ports: list[int] = field(default_factory=list)
    cut: threading.Event = field(default_factory=threading.Event)
    stall_after: int | None = None  # tokens, then silence


def stand_in(seen: Seen) -> Starlette:
    def event(payload: object) -> str:
        return f"data: {json.dumps(payload)}\n\n"

    def chunk(delta: dict[str, str], finish: str | None = None) -> str:
        return event(
            {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    async def chat(request: Request) -> Response:
        body = await request.json()
        assert request.client is not None
        seen.ports.append(request.client.port)
        tokens = int(body["max_tokens"])

        async def tokens_then_done() -> AsyncIterator[str]:
            try:
                yield chunk({"role": "assistant", "content": ""})
                for i in range(tokens):
                    if seen.stall_after is not None and i >= seen.stall_after:
                        await asyncio.sleep(30)
                    yield chunk({"content": f" t{i}"})
                    await asyncio.sleep(0.01)
                yield chunk({}, "length")
                yield event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": tokens}})
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:
                seen.cut.set()  # the client went away: vLLM would abort here
                raise

        return StreamingResponse(tokens_then_done(), media_type="text/event-stream")

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": BASE, "parent": None, "max_model_len": 512}]})

    async def health(_: Request) -> Response:
        return PlainTextResponse("")

    routes = [
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]
    return Starlette(routes=routes)


@pytest.fixture(params=[Http1Transport, HttpxUpstream], ids=["http1", "httpx"])
def client(request: pytest.FixtureRequest) -> Callable[[], UpstreamClient]:
    """The client class of this run: the default (http1) and the stock fallback (httpx's pool)."""
    factory: Callable[[], UpstreamClient] = request.param
    return factory


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def server(seen: Seen) -> Iterator[LiveServer]:
    with LiveServer(app=stand_in(seen), ready_path="/health") as live:
        yield live


def upstream(server: LiveServer) -> str:
    return server.base_url.removesuffix("/v1")


def request(max_tokens: int) -> GenerationRequest:
    params = SamplingParams(max_tokens=max_tokens)
    return GenerationRequest("req-1", [ChatMessage("user", "hi")], params)


async def started(client: UpstreamClient, urls: list[str], **options: float) -> VllmEngine:
    engine = VllmEngine(urls, model_name="gateway-name", client=client, **options)
    await engine.check_replicas()
    return engine


async def text_of(stream: AsyncIterator[Delta]) -> str:
    return "".join([d.text async for d in stream])


async def test_requests_share_one_upstream_connection(
    client: Callable[[], UpstreamClient], server: LiveServer, seen: Seen
) -> None:
    engine = await started(client(), [upstream(server)])
    try:
        for _ in range(3):
            assert await text_of(engine.stream(request(3))) == " t0 t1 t2"
    finally:
        await engine.close()
    assert len(seen.ports) == 3 and len(set(seen.ports)) == 1, "each request opened its own connection"


async def test_closing_a_stream_early_closes_the_upstream_request(
    client: Callable[[], UpstreamClient], server: LiveServer, seen: Seen
) -> None:
    engine = await started(client(), [upstream(server)])
    try:
        stream = engine.stream(request(500))
        assert (await anext(stream)).text == " t0"
        await stream.aclose()  # what the gateway does when its client leaves
        assert await asyncio.to_thread(seen.cut.wait, 5), "the stand-in went on generating"
        assert await text_of(engine.stream(request(2))) == " t0 t1", "the next request still works"
    finally:
        await engine.close()


async def test_a_refused_replica_is_failed_over(
    client: Callable[[], UpstreamClient], server: LiveServer
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    engine = await started(client(), [dead, upstream(server)])
    try:
        engine.router.replicas[0].up = True  # it died after the last health check
        for _ in range(2):
            assert await text_of(engine.stream(request(2))) == " t0 t1"
        assert not engine.router.replicas[0].up
    finally:
        await engine.close()


async def test_a_stream_that_stalls_times_out_as_an_upstream_error(
    client: Callable[[], UpstreamClient], server: LiveServer, seen: Seen
) -> None:
    seen.stall_after = 2
    engine = await started(client(), [upstream(server)], read_timeout=0.5)
    started_at = time.monotonic()
    try:
        with pytest.raises(UpstreamError, match="broke while generating"):
            await text_of(engine.stream(request(5)))
    finally:
        await engine.close()
    assert time.monotonic() - started_at < 10
