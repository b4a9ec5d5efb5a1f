"""A client that leaves stops vLLM's work: the gateway closes the upstream request."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import TINY_MODEL, LiveServer
from tests.vllm.servers import LONG_REQUEST_TOKENS, VllmServer

pytestmark = pytest.mark.vllm

RUNNING = "vllm:num_requests_running"
GENERATED = "vllm:generation_tokens_total"
MAX_TOKENS = LONG_REQUEST_TOKENS


def metric(replicas: list[VllmServer], name: str) -> float:
    return sum(r.gauge(name) for r in replicas)


@pytest.mark.parametrize("department", ["plain", "legal"])
def test_a_stream_the_client_drops_is_aborted_in_vllm(
    vllm_gateway: LiveServer, replicas: list[VllmServer], acme_key: str, department: str
) -> None:
    body = {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "Tell me everything."}],
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,  # so a request nobody aborts makes exactly MAX_TOKENS tokens
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {acme_key}", "X-Department": department}
    url = f"{vllm_gateway.base_url}/chat/completions"
    generated_before = metric(replicas, GENERATED)
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        for _ in range(4):
            next(line for line in lines if line.startswith("data: "))
    # Reading vLLM's running count while the stream is open is racy on a loaded machine (its API
    # server lags its engine, and its /metrics can take seconds to answer while it streams); what
    # must hold is that vLLM stops early and its running count goes back to 0.
    deadline = time.monotonic() + 30
    while metric(replicas, RUNNING) != 0:
        assert time.monotonic() < deadline, "vLLM kept generating for a client that left"
        time.sleep(0.1)
    generated = metric(replicas, GENERATED) - generated_before
    assert 0 < generated < MAX_TOKENS, (
        f"vLLM made {generated:.0f} of {MAX_TOKENS} tokens for a client that left after 4 chunks"
    )
