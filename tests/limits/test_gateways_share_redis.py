"""Two gateways, one Redis: a department's limit holds for both together, through real servers."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_MODEL, LiveServer
from tests.worlds import build_deployment

TENANTS = """
tenants:
  acme:
    departments:
      it:
        limits: {requests_per_minute: 4}
"""


def test_a_limit_holds_across_two_gateways(tmp_path: Path, tiny_model_dir: Path, redis_url: str) -> None:
    world = build_deployment(
        tmp_path, tiny_model_dir, tenants=TENANTS, templates={}, adapters=[],
        limits_backend="redis", redis_url=redis_url,
    )  # fmt: skip
    secret = world.keys.create("acme", None)[1]
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    headers = {"Authorization": f"Bearer {secret}"}
    with LiveServer(world.settings) as first, LiveServer(world.settings) as second:
        statuses = [
            httpx.post(
                f"{server.base_url}/chat/completions", json=body, headers=headers, timeout=60
            ).status_code
            for _ in range(4)
            for server in (first, second)
        ]
    assert sorted(statuses) == [200] * 4 + [429] * 4, statuses  # 4 a minute between them, not 4 each


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_gateway_keeps_answering_without_redis(tmp_path: Path, tiny_model_dir: Path, mode: str) -> None:
    world = build_deployment(
        tmp_path, tiny_model_dir, tenants=TENANTS, templates={}, adapters=[],
        limits_backend="redis", redis_url="redis://127.0.0.1:1/0", limits_failure_mode=mode,
    )  # fmt: skip
    secret = world.keys.create("acme", None)[1]
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    with LiveServer(world.settings) as server:
        answer = httpx.post(
            f"{server.base_url}/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=60,
        )
    assert answer.status_code == (200 if mode == "open" else 503), answer.text
