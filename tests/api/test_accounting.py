"""Limits and the usage ledger on the request path, through a real server and the real openai SDK.

Each generating route admits under the limits of the request's key, department and tenant
(429 with OpenAI's headers past them) and leaves one ledger record, committed before the
answer's last bytes; these tests read the SQLite file the server writes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest

from service import accounting
from service.app import create_app
from tests.conftest import TINY_MODEL, LiveServer
from tests.gates import gated_engine
from tests.worlds import Deployment, build_deployment

TENANTS = """
tenants:
  globex:
    record_text: {retention_days: 7}
    departments:
      support: {}
  acme:
    default_department: it
    limits: {tokens_per_day: 100000}
    departments:
      it: {}
      legal:
        limits: {requests_per_minute: 2}
      ops:
        limits: {concurrent_requests: 1}
"""
ASK = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Deployment:
    root = tmp_path_factory.mktemp("accounting")
    return build_deployment(
        root,
        tiny_model_dir,
        tenants=TENANTS,
        templates={},
        adapters=[],
        ledger_url=f"sqlite:///{root}/usage.db",
    )


@pytest.fixture(scope="module")
def server(world: Deployment) -> Iterator[LiveServer]:
    with LiveServer(world.settings) as live:
        yield live


@pytest.fixture(scope="module")
def key(world: Deployment) -> tuple[str, str]:
    key_id, secret = world.keys.create("acme", None)
    return key_id, secret


def client(server: LiveServer, secret: str, department: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.base_url, api_key=secret, max_retries=0, default_headers={"X-Department": department}
    )


def rows(world: Deployment, request_id: str) -> list[dict[str, Any]]:
    url = world.settings.ledger_url or ""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM usage_records WHERE request_id = ?", (request_id,)).fetchall()
    return [dict(row) for row in found]


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_is_in_the_ledger_when_the_client_has_it(
    server: LiveServer, world: Deployment, key: tuple[str, str], stream: bool
) -> None:
    request_id = f"ledger-chat-{stream}"
    sdk = client(server, key[1], "it")
    if stream:
        chunks = list(
            sdk.chat.completions.create(
                model=TINY_MODEL,
                messages=ASK,  # type: ignore[arg-type]
                max_tokens=5,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"X-Request-Id": request_id},
            )
        )
        usage = chunks[-1].usage
    else:
        usage = (
            sdk.chat.completions.create(
                model=TINY_MODEL,
                messages=ASK,  # type: ignore[arg-type]
                max_tokens=5,
                extra_headers={"X-Request-Id": request_id},
            )
        ).usage
    (row,) = rows(world, request_id)  # read at once: committed before the answer ended
    assert usage is not None
    assert (row["tenant"], row["department"], row["key_id"], row["route"]) == ("acme", "it", key[0], "chat")
    assert (row["model"], row["adapter"], row["template"], row["engine"]) == (
        TINY_MODEL,
        "base",
        "none",
        "local",
    )
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert row["status"] == 200 and row["error_type"] is None
    assert row["latency_ms"] > 0 and row["ttft_ms"] is not None and row["ttft_ms"] <= row["latency_ms"]
    assert row["prompt_text"] is None and row["completion_text"] is None  # no text unless opted in


def test_refusals_are_recorded_but_not_unauthenticated_requests(
    server: LiveServer, world: Deployment, key: tuple[str, str]
) -> None:
    with pytest.raises(openai.BadRequestError):
        client(server, key[1], "it").chat.completions.create(
            model=TINY_MODEL,
            messages=ASK,  # type: ignore[arg-type]
            extra_body={"frobnicate": 1},
            extra_headers={"X-Request-Id": "ledger-400"},
        )
    (row,) = rows(world, "ledger-400")
    assert (row["status"], row["error_type"], row["key_id"]) == (400, "invalid_request_error", key[0])
    with pytest.raises(openai.AuthenticationError):
        client(server, "sk-wrong-key-00000000000", "it").chat.completions.create(
            model=TINY_MODEL,
            messages=ASK,  # type: ignore[arg-type]
            extra_headers={"X-Request-Id": "ledger-401"},
        )
    assert rows(world, "ledger-401") == []


def test_completions_and_embeddings_are_recorded_too(
    server: LiveServer, world: Deployment, key: tuple[str, str]
) -> None:
    sdk = client(server, key[1], "it")
    answer = sdk.completions.create(
        model=TINY_MODEL, prompt=["One", "Two"], max_tokens=3, extra_headers={"X-Request-Id": "ledger-cmpl"}
    )
    (row,) = rows(world, "ledger-cmpl")
    assert row["route"] == "completions"
    assert answer.usage is not None and row["prompt_tokens"] == answer.usage.prompt_tokens  # both prompts
    with pytest.raises(openai.NotFoundError):  # no embedding model configured: 404, recorded
        sdk.embeddings.create(model="none", input="x", extra_headers={"X-Request-Id": "ledger-emb"})
    (row,) = rows(world, "ledger-emb")
    assert (row["route"], row["status"]) == ("embeddings", 404)


def test_a_rate_limit_gives_429_with_openais_headers(server: LiveServer, key: tuple[str, str]) -> None:
    url = f"{server.base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {key[1]}", "X-Department": "legal"}
    body = {"model": TINY_MODEL, "messages": ASK, "max_tokens": 2}
    answers = [httpx.post(url, json=body, headers=headers, timeout=60) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "2"
    assert answers[1].headers["x-ratelimit-remaining-requests"] == "0"
    refused = answers[2]
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert float(refused.headers["retry-after"]) > 0 and "x-ratelimit-reset-requests" in refused.headers
    with pytest.raises(openai.RateLimitError):  # the SDK's class, with retries off
        client(server, key[1], "legal").chat.completions.create(model=TINY_MODEL, messages=ASK)  # type: ignore[arg-type]


def test_a_concurrency_limit_holds_while_a_stream_runs(world: Deployment, key: tuple[str, str]) -> None:
    gate = threading.Event()  # clear: the engine holds the stream after its first delta
    app = create_app(world.settings, engine_factory=lambda settings: gated_engine(settings, gate))
    short = {"model": TINY_MODEL, "messages": ASK, "max_tokens": 2}
    headers = {"Authorization": f"Bearer {key[1]}", "X-Department": "ops"}
    with (
        LiveServer(app=app) as server,
        httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as http,
    ):
        with http.stream("POST", "/chat/completions", json=short | {"stream": True}) as running:
            assert running.status_code == 200
            lines = running.iter_lines()
            next(lines)  # in flight, held
            second = http.post("/chat/completions", json=short)
            assert second.status_code == 429, second.text
            assert second.json()["error"]["type"] == "rate_limit_error"
            gate.set()
            assert any("[DONE]" in line for line in lines)
        assert http.post("/chat/completions", json=short).status_code == 200  # its slot is free again


def test_text_is_kept_only_for_a_tenant_that_opted_in(server: LiveServer, world: Deployment) -> None:
    secret = world.keys.create("globex", None)[1]
    answer = client(server, secret, "support").chat.completions.create(
        model=TINY_MODEL,
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=4,
        extra_headers={"X-Request-Id": "ledger-text"},
    )
    (row,) = rows(world, "ledger-text")
    assert json.loads(row["prompt_text"])[-1] == ASK[0]
    assert row["completion_text"] == answer.choices[0].message.content
    assert row["retention_days"] == 7 and row["text_expires"] is not None
    (other,) = rows(world, "ledger-chat-False")  # acme did not opt in
    assert other["prompt_text"] is None and other["completion_text"] is None


async def test_an_answer_waits_at_most_ledger_wait_for_its_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that hangs must not hold answers: after LEDGER_WAIT the answer goes out regardless."""
    monkeypatch.setattr(accounting, "LEDGER_WAIT", 0.05)
    loop = asyncio.get_running_loop()
    never: asyncio.Future[None] = loop.create_future()  # a commit that never comes
    state: Any = SimpleNamespace(ledger=SimpleNamespace(record=lambda entry: never))
    started = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(accounting._wait(state, entry=None), 5)  # type: ignore[arg-type]
    assert 0.04 <= loop.time() - started < 2
    assert never.done()  # the writer skips it when the commit lands later
