"""A killed replica: requests go to the other, health checks take it out, and bring it back."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import TINY_MODEL, LiveServer
from tests.vllm.servers import VllmServer

pytestmark = pytest.mark.vllm


def ready(gateway: LiveServer) -> dict:
    return httpx.get(gateway.base_url.removesuffix("/v1") + "/ready", timeout=10).json()


def wait_for(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_killed_replica_fails_over_and_comes_back(
    vllm_gateway: LiveServer, replicas: list[VllmServer], acme_key: str
) -> None:
    headers = {"Authorization": f"Bearer {acme_key}"}
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    victim = replicas[1]
    assert ready(vllm_gateway)["replicas_up"] == 2
    victim.kill()
    try:
        for department in ("plain", "it", "legal", "it", "plain", "legal"):  # none may fail
            reply = httpx.post(
                f"{vllm_gateway.base_url}/chat/completions",
                json=body,
                headers=headers | {"X-Department": department},
                timeout=60,
            )
            assert reply.status_code == 200, reply.text
        wait_for(lambda: ready(vllm_gateway)["replicas_up"] == 1, timeout=10)
    finally:
        victim.start().wait_healthy()
    wait_for(lambda: ready(vllm_gateway)["replicas_up"] == 2, timeout=15)
