"""The gateway in front of scripted vLLM replicas: what the client sees of usage, errors and failures.

Over each ``UpstreamClient``: ``HttpxUpstream`` over the MockTransport, and the gateway's own
HTTP/1.1 client and httpx's pool against the replicas on sockets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from service.app import create_app
from service.config import Settings
from service.engines.vllm.engine import VllmEngine
from tests.conftest import API_KEY, wait_ready
from tests.engines.fake_vllm import WIRES, Cluster, Wire

BODY = {"model": "gateway-name", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture(params=WIRES)
def wire(request: pytest.FixtureRequest) -> Wire:
    wire: Wire = request.param
    return wire


@pytest.fixture
async def cluster(wire: Wire) -> AsyncIterator[Cluster]:
    cluster = Cluster(1)
    if wire != "mock":
        await cluster.listen()
    yield cluster
    await cluster.close()


@pytest.fixture
async def gateway(cluster: Cluster, wire: Wire) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(api_key=API_KEY, model_name="gateway-name", engine="vllm", upstream=cluster.urls)

    def engine(s: Settings) -> VllmEngine:
        client = cluster.client(wire)
        return VllmEngine(s.upstream, model_name=s.model_name, client=client, health_interval=0.05)

    app = create_app(settings, engine_factory=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", headers=headers) as client:
            await wait_ready(client)
            yield client


def events(text: str) -> list[object]:
    return [json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]" for line in text.splitlines() if line]


@pytest.mark.parametrize("include_usage", [False, True])
async def test_usage_is_always_asked_for_and_only_relayed_when_wanted(
    gateway: httpx.AsyncClient, cluster: Cluster, include_usage: bool
) -> None:
    body = BODY | {"stream": True, "stream_options": {"include_usage": include_usage}}
    response = await gateway.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    sent = cluster[0].bodies_sent("/v1/chat/completions")[-1]
    assert sent["stream_options"] == {"include_usage": True}
    received = events(response.text)
    usage_chunks = [e for e in received if isinstance(e, dict) and e.get("usage")]
    if include_usage:
        assert usage_chunks == [received[-2]] and usage_chunks[0]["usage"]["completion_tokens"] == 3
    else:
        assert usage_chunks == []
    assert received[-1] == "[DONE]"


async def test_non_streaming_answer_carries_vllms_token_counts(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 200
    data = response.json()
    assert data["choices"][0]["message"]["content"] == "Hello from vLLM"
    assert data["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


async def test_a_failure_mid_stream_ends_with_an_error_event_and_done(
    gateway: httpx.AsyncClient, cluster: Cluster
) -> None:
    cluster[0].break_after = 2
    response = await gateway.post("/v1/chat/completions", json=BODY | {"stream": True})
    assert response.status_code == 200
    received = events(response.text)
    assert received[-1] == "[DONE]"
    error = received[-2]
    assert isinstance(error, dict) and error["error"]["type"] == "upstream_error"
    cluster[0].break_after = None
    assert (await gateway.post("/v1/chat/completions", json=BODY)).status_code == 200  # still serving


async def test_upstream_refusal_before_the_first_byte_is_a_real_http_error(
    gateway: httpx.AsyncClient, cluster: Cluster
) -> None:
    cluster[0].chat_status = 400
    cluster[0].chat_error = "max_tokens=5000 cannot be greater than max_model_len=2048."
    response = await gateway.post("/v1/chat/completions", json=BODY | {"stream": True})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


async def test_ready_reflects_the_replicas(gateway: httpx.AsyncClient, cluster: Cluster) -> None:
    ready = (await gateway.get("/ready")).json()
    assert ready["replicas_up"] == 1
    cluster[0].alive = False
    for _ in range(100):
        if (await gateway.get("/ready")).status_code == 503:
            break
        await asyncio.sleep(0.02)
    assert (await gateway.get("/ready")).status_code == 503
    response = await gateway.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 503
