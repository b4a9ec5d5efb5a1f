"""The seam in front of the vLLM backend's HTTP client: any ``UpstreamClient`` will do.

The backend never asks which client it has, so one that wraps another (here: adding an upstream
key to every call, as a deployment behind an authenticating proxy would) serves every call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.domain import ChatMessage, GenerationRequest, SamplingParams
from service.engines.vllm import upstream
from service.engines.vllm.engine import VllmEngine
from service.engines.vllm.upstream import Headers, HttpxUpstream, Timeouts, UpstreamClient, UpstreamReply
from tests.engines.fake_vllm import WIRES, Cluster, Wire, sse

KEY = (b"authorization", b"Bearer upstream-key")


class Keyed:
    """An ``UpstreamClient`` of no known class: another one, with a key on every request."""

    def __init__(self, inner: UpstreamClient):
        self.inner = inner

    async def request(
        self, method: str, url: httpx.URL, content: bytes, headers: Headers, timeouts: Timeouts
    ) -> UpstreamReply:
        return await self.inner.request(method, url, content, [*headers, KEY], timeouts)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(params=WIRES)
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Cluster, Wire]]:
    cluster = Cluster(1)
    if request.param != "mock":
        await cluster.listen()
    yield cluster, request.param
    await cluster.close()


async def test_any_client_serves_every_call_of_the_backend(
    cluster: tuple[Cluster, Wire], tmp_path: Path
) -> None:
    fake, wire = cluster
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    engine = VllmEngine(fake.urls, model_name="m", client=Keyed(fake.client(wire)), max_loaded_adapters=1)
    try:
        await engine.ensure_adapter("it@1", tmp_path)
        await engine.ensure_adapter("hr@1", tmp_path)
        await engine.check_replicas()
        await engine.read_gauges()
        for adapter in ("it@1", "hr@1"):  # the second unloads the first
            params = SamplingParams(max_tokens=4)
            request = GenerationRequest("req-1", [ChatMessage("user", "hi")], params, adapter=adapter)
            assert "".join([d.text async for d in engine.stream(request)]) == "Hello from vLLM"
    finally:
        await engine.close()
    paths = fake[0].paths()
    assert {"/health", "/v1/models", "/metrics", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"} < set(
        paths
    )
    assert all(h["authorization"] == "Bearer upstream-key" for h in fake[0].headers)
    assert all(
        h["x-request-id"] == "req-1"
        for p, h in zip(paths, fake[0].headers, strict=True)
        if p.endswith("completions")
    )


class Stalled(httpx.AsyncByteStream):
    """[DONE], then nothing: the body's end never comes."""

    closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield sse("[DONE]")
        await asyncio.sleep(30)

    async def aclose(self) -> None:
        self.closed = True


async def test_an_httpx_reply_released_at_done_is_not_waited_on_for_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx keeps a connection only once its answer is read to the end: a released reply is
    read on at its close, but no longer than ``DRAIN_WAIT``, then closed."""
    monkeypatch.setattr(upstream, "DRAIN_WAIT", 0.05)
    body = Stalled()
    client = HttpxUpstream(httpx.MockTransport(lambda _: httpx.Response(200, stream=body)))
    reply = await client.request("POST", httpx.URL("http://vllm/v1/chat/completions"), b"{}", [], {})
    assert await anext(aiter(reply)) == b"data: [DONE]\n\n"
    reply.release_at_end()
    started = time.monotonic()
    await reply.aclose()
    assert time.monotonic() - started < 1 and body.closed
