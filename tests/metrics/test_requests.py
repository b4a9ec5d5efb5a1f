"""Requests, tokens, latencies and in-flight requests, through the ASGI app on the fake engine."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.engines.base import EngineHealth
from service.errors import EngineUnavailableError, LoragateError
from tests.fakes import FakeEngine

from .conftest import AUTH, fake_app
from .helpers import CHAT_URL, ROUTE_FAMILIES, scrape

ROUTE = {"tenant": "default", "department": "general", "adapter": "base"}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": "Say something."}]} | fields


async def test_a_completion_is_counted_with_its_usage_and_latencies(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post(CHAT_URL, json=body(n=2), headers=AUTH)
    assert response.status_code == 200
    usage = response.json()["usage"]
    out = await scrape(gateway)
    assert out.get("loragate_requests_total", **ROUTE, status="200") == 1
    assert out.get("loragate_prompt_tokens_total", **ROUTE) == usage["prompt_tokens"] == 7
    assert out.get("loragate_completion_tokens_total", **ROUTE) == usage["completion_tokens"] == 6
    assert out.get("loragate_request_duration_seconds_count", **ROUTE) == 1
    assert out.get("loragate_time_to_first_token_seconds_count", **ROUTE) == 1
    assert (
        out.get("loragate_inter_token_latency_seconds_count", **ROUTE) == 4
    )  # 3 deltas a choice: 2 gaps each
    assert out.get("loragate_queue_time_seconds_count", **ROUTE) is None  # the fake cannot tell
    assert out.get("loragate_requests_in_flight", tenant="default", department="general") == 0
    assert out.get("loragate_requests_in_flight", tenant="unknown", department="unknown") == 0
    assert out.sum("loragate_errors_total") == 0
    assert out.types["loragate_request_duration_seconds"] == "histogram"
    assert out.get("loragate_build_info", version="0.1.0", engine="fake", model="fake-model") == 1
    assert out.get("loragate_engine_batch_size") == 0 and out.get("loragate_engine_queue_depth") == 0
    assert out.sum("process_cpu_seconds_total") > 0 and out.sum("python_info") == 1


async def test_a_stream_is_counted_when_it_ends(gateway: httpx.AsyncClient) -> None:
    request = body(stream=True, stream_options={"include_usage": True})
    response = await gateway.post(CHAT_URL, json=request, headers=AUTH)
    assert response.status_code == 200
    events = [
        line.removeprefix("data: ") for line in response.text.split("\n\n") if line.startswith("data: {")
    ]
    usage = json.loads(events[-1])["usage"]
    out = await scrape(gateway)
    assert out.get("loragate_requests_total", **ROUTE, status="200") == 1
    assert out.get("loragate_prompt_tokens_total", **ROUTE) == usage["prompt_tokens"]
    assert out.get("loragate_completion_tokens_total", **ROUTE) == usage["completion_tokens"] == 3
    assert out.get("loragate_time_to_first_token_seconds_count", **ROUTE) == 1
    assert out.get("loragate_inter_token_latency_seconds_count", **ROUTE) == 2
    assert out.get("loragate_request_duration_seconds_count", **ROUTE) == 1
    assert out.get("loragate_requests_in_flight", tenant="default", department="general") == 0


async def test_a_mid_stream_error_counts_200_and_the_error(
    gateway: httpx.AsyncClient, fake: FakeEngine
) -> None:
    fake.fail_mid_stream = LoragateError("boom")
    response = await gateway.post(CHAT_URL, json=body(stream=True), headers=AUTH)
    assert response.status_code == 200 and '"error"' in response.text
    out = await scrape(gateway)
    assert out.get("loragate_requests_total", **ROUTE, status="200") == 1
    assert out.get("loragate_errors_total", **ROUTE, type="internal_error") == 1
    assert out.get("loragate_requests_in_flight", tenant="default", department="general") == 0


@pytest.mark.parametrize(
    ("failure", "status", "kind"),
    [
        (EngineUnavailableError("loading"), "503", "service_unavailable"),
        (RuntimeError("bug"), "500", "internal_error"),
    ],
)
async def test_engine_failures_count_their_status_and_type(
    gateway: httpx.AsyncClient, fake: FakeEngine, failure: BaseException, status: str, kind: str
) -> None:
    fake.fail_at_start = failure
    for stream in (False, True):
        response = await gateway.post(CHAT_URL, json=body(stream=stream), headers=AUTH)
        assert response.status_code == int(status)
    out = await scrape(gateway)
    assert out.get("loragate_requests_total", **ROUTE, status=status) == 2
    assert out.get("loragate_errors_total", **ROUTE, type=kind) == 2
    assert out.get("loragate_request_duration_seconds_count", **ROUTE) == 2
    assert out.sum("loragate_time_to_first_token_seconds_count") == 0


async def test_failures_before_a_route_are_labelled_unknown(gateway: httpx.AsyncClient) -> None:
    unknown = {"tenant": "unknown", "department": "unknown", "adapter": "unknown"}
    keyed = {"tenant": "default", "department": "unknown", "adapter": "unknown"}
    cases = [
        ({}, body(), 401),  # no key
        ({"Authorization": "Bearer sk-wrong-key-123"}, body(), 401),
        (AUTH, b"{not json", 400),
        (AUTH | {"X-Department": "evil-value-123"}, body(), 404),
        (AUTH, body(model="bogus-model"), 404),
        (AUTH, body(n=99), 400),  # routed: counted with the route's labels
        (AUTH, b"x" * 5000, 413),  # refused by the body limit, before the app sees it
    ]
    for headers, payload, status in cases:
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        response = await gateway.post(
            CHAT_URL, content=content, headers=headers | {"content-type": "application/json"}
        )
        assert response.status_code == status, response.text
    out = await scrape(gateway)
    assert out.get("loragate_requests_total", **unknown, status="401") == 2
    assert out.get("loragate_errors_total", **unknown, type="invalid_request_error") == 3  # 401s and the 413
    assert out.get("loragate_requests_total", **unknown, status="413") == 1
    assert out.get("loragate_requests_total", **keyed, status="400") == 1
    assert out.get("loragate_requests_total", **keyed, status="404") == 2
    assert out.get("loragate_errors_total", **keyed, type="invalid_request_error") == 3
    assert out.get("loragate_requests_total", **ROUTE, status="400") == 1
    assert out.sum("loragate_requests_total") == len(cases)
    assert out.sum("loragate_requests_in_flight") == 0
    for name in ROUTE_FAMILIES:
        assert out.sum(name, tenant="unknown") + out.sum(name, tenant="default") == out.sum(name)
    for sent in ("evil-value-123", "bogus-model", "sk-wrong-key-123"):
        assert sent not in out.text


async def test_metrics_needs_no_key_and_is_not_a_chat_request(gateway: httpx.AsyncClient) -> None:
    for _ in range(2):
        out = await scrape(gateway)
    assert (await gateway.get("/v1/models", headers=AUTH)).status_code == 200
    assert out.sum("loragate_requests_total") == 0
    assert out.types["loragate_rate_limited"] == "counter" and out.sum("loragate_rate_limited_total") == 0
    assert out.types["loragate_replica_up"] == "gauge"
    assert out.get("loragate_gpu_available") == 0  # the fixture's NVML has no driver


class BusyEngine(FakeEngine):
    async def health(self) -> EngineHealth:
        return EngineHealth(True, "ready", {"running": 5, "waiting": 2})


async def test_engine_gauges_are_read_from_the_engine_at_scrape_time() -> None:
    app = fake_app(BusyEngine())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            out = await scrape(client)
    assert out.get("loragate_engine_batch_size") == 5
    assert out.get("loragate_engine_queue_depth") == 2


async def test_hooks_for_the_rate_limiter_and_vllm_replicas(app: FastAPI, gateway: httpx.AsyncClient) -> None:
    assert (await scrape(gateway)).sum("loragate_replica_up") == 0
    metrics = app.state.loragate.metrics
    metrics.rate_limited("default")
    metrics.replica_health("vllm-0", True)
    metrics.replica_health("vllm-1", False)
    out = await scrape(gateway)
    assert out.get("loragate_rate_limited_total", tenant="default") == 1
    assert out.get("loragate_replica_up", replica="vllm-0") == 1
    assert out.get("loragate_replica_up", replica="vllm-1") == 0
