"""The benchmark's stand-ins work as servers: the instant upstream, and the bare relay in front of it.

``make bench`` is not run by CI; these catch a stand-in that no longer starts or relays.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from loadtests import floor_relay, instant_upstream
from tests.conftest import LiveServer

BODY = {
    "model": instant_upstream.MODEL,
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 3,
    "stream": True,
}


@pytest.fixture(scope="module")
def relay() -> Iterator[LiveServer]:
    with LiveServer(app=instant_upstream.app, ready_path="/health") as upstream:
        floor_relay.UPSTREAM = httpx.URL(f"http://127.0.0.1:{upstream.port}")
        with LiveServer(app=floor_relay.app, ready_path="/health") as server:
            yield server


def test_the_bare_relay_passes_on_gets_and_streams(relay: LiveServer) -> None:
    assert httpx.get(f"http://127.0.0.1:{relay.port}/health").status_code == 200
    models = httpx.get(f"{relay.base_url}/models").json()
    assert models["data"][0]["id"] == instant_upstream.MODEL
    answer = httpx.post(f"{relay.base_url}/chat/completions", json=BODY)
    events = [line for line in answer.text.splitlines() if line.startswith("data: ")]
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]" and sum('"Hi"' in event for event in events) == 3
