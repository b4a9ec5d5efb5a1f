"""A client that leaves stops vLLM's work: the gateway closes the upstream request."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import TINY_MODEL, LiveServer
from tests.vllm.servers import VllmServer

pytestmark = pytest.mark.vllm

RUNNING = "vllm:num_requests_running"


def running(replicas: list[VllmServer]) -> float:
    return sum(r.gauge(RUNNING) for r in replicas)


@pytest.mark.parametrize("department", ["plain", "legal"])
def test_a_stream_the_client_drops_is_aborted_in_vllm(
    vllm_gateway: LiveServer, replicas: list[VllmServer], acme_key: str, department: str
) -> None:
    body = {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "Tell me everything."}],
        "max_tokens": 980,  # minutes of work for one request if nobody stopped it
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {acme_key}", "X-Department": department}
    url = f"{vllm_gateway.base_url}/chat/completions"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        for _ in range(4):
            next(line for line in lines if line.startswith("data: "))
        assert running(replicas) == 1
    deadline = time.monotonic() + 10
    while running(replicas) != 0:
        assert time.monotonic() < deadline, "vLLM kept generating for a client that left"
        time.sleep(0.1)
