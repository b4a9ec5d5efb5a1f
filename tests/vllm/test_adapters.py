"""Adapters on real vLLM: loaded on first use, unloaded when evicted; affinity across two replicas."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from service.domain import ChatMessage, GenerationRequest, SamplingParams
from service.engines.vllm.engine import VllmEngine
from service.errors import AdapterLoadError
from tests.conftest import TINY_MODEL, LiveServer
from tests.demo_adapters import make_adapter
from tests.vllm.servers import VllmServer
from tests.worlds import Deployment

pytestmark = pytest.mark.vllm


def ask(adapter: str | None) -> GenerationRequest:
    sampling = SamplingParams(max_tokens=4, temperature=0)
    return GenerationRequest("t", [ChatMessage("user", "hello")], sampling, adapter=adapter)


async def test_loaded_on_first_use_and_unloaded_when_evicted(
    deployment: Deployment, replicas: list[VllmServer]
) -> None:
    replica = replicas[0]
    engine = VllmEngine([replica.url], model_name=TINY_MODEL, max_loaded_adapters=1)
    try:
        await engine.check_replicas()
        names = {}
        for ref, path in deployment.adapters.items():
            names[ref] = "evict-" + ref  # names of their own: the gateways' loads stay untouched
            await engine.ensure_adapter(names[ref], path)
        first, second = names.values()
        assert first not in replica.models()
        assert [d async for d in engine.stream(ask(first))][-1].finish_reason == "length"
        assert first in replica.models()
        await asyncio.wait_for(_drain(engine, second), 60)
        models = replica.models()
        assert second in models and first not in models
    finally:
        await engine.close()


async def _drain(engine: VllmEngine, adapter: str) -> None:
    async for _ in engine.stream(ask(adapter)):
        pass


async def test_an_adapter_vllm_refuses_is_a_clear_error_and_the_replica_serves_on(
    vllm_model_dir, replicas: list[VllmServer], tmp_path
) -> None:
    too_big = make_adapter(vllm_model_dir, tmp_path / "rank32", rank=32)  # the replicas allow up to 16
    engine = VllmEngine([replicas[0].url], model_name=TINY_MODEL)
    try:
        await engine.check_replicas()
        await engine.ensure_adapter("too-big@1", too_big)
        with pytest.raises(AdapterLoadError, match="could not load the adapter `too-big@1`"):
            await _drain(engine, "too-big@1")
        assert (await engine.health()).ready
        assert [d async for d in engine.stream(ask(None))][-1].completion_tokens == 4
    finally:
        await engine.close()


def test_affinity_keeps_an_adapter_on_one_replica(
    vllm_gateway: LiveServer, replicas: list[VllmServer], acme_key: str
) -> None:
    headers = {"Authorization": f"Bearer {acme_key}", "X-Department": "it"}
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for _ in range(6):
        url = f"{vllm_gateway.base_url}/chat/completions"
        response = httpx.post(url, json=body, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
    adapter = response.headers["x-loragate-adapter"]
    holders = [r for r in replicas if adapter in r.models()]
    assert len(holders) == 1, [r.models() for r in replicas]
