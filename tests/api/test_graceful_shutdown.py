"""Graceful shutdown: draining (``service/admission.py``) and SIGTERM on a real ``loragate serve``.

What is true once a shutdown begins:

- new connections are refused (uvicorn closes its listening socket at once) and idle kept-alive
  connections are closed;
- a new generating request that still reaches the gateway (pipelined behind an answer in flight)
  gets 503 ``server_shutting_down`` with ``Retry-After``, and ``/ready`` answers 503 ``draining``;
- answers in flight, streams included, finish if they can within ``shutdown_grace``; those still
  running then end with an error event (``server_shutting_down``) and ``[DONE]``, or 503;
- then the process exits, its ledger holding the records of the answers it sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from tests.api.helpers import assert_envelope, chat_body, sse_events
from tests.conftest import API_KEY, LiveServer, free_port, make_settings
from tests.engines.fake_vllm import Cluster, FakeVllm
from tests.gates import gated_engine

AUTH = {"Authorization": f"Bearer {API_KEY}"}
HELD_FOR = 60  # seconds: a hang guard only
SLACK = 1.5  # seconds an answer at the end of the grace may come late on a busy machine


# -- draining, in process: the embedded engine ------------------------------------------------------
def test_draining_refuses_new_requests_and_ends_what_outlives_the_grace(tiny_model_dir: Path) -> None:
    grace = 1.0
    settings = make_settings(tiny_model_dir, shutdown_grace=grace)
    engine = gated_engine(settings, threading.Event())
    app = create_app(settings, engine_factory=lambda _: engine)
    with (
        LiveServer(app=app) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH, timeout=HELD_FOR) as http,
    ):
        held = engine.scheduler
        assert held is not None
        answers: dict[str, httpx.Response] = {}

        def ask(request_id: str, stream: bool) -> None:
            body = chat_body(max_tokens=8, ignore_eos=True, stream=stream)
            answers[request_id] = http.post(
                "/chat/completions", json=body, headers={"x-request-id": request_id}
            )

        engine.gate.clear()
        threads = [threading.Thread(target=ask, args=("drain-stream", True))]
        threads[0].start()
        assert held.holding.wait(HELD_FOR)
        threads.append(threading.Thread(target=ask, args=("drain-json", False)))  # queued behind it
        threads[1].start()
        while held.waiting != 1:
            time.sleep(0.01)

        loop = server.server.servers[0].get_loop()
        loop.call_soon_threadsafe(app.drain)  # as `loragate serve` does on SIGTERM (GatewayServer)
        drained = time.monotonic()
        ready = httpx.get(f"{server.base_url.removesuffix('/v1')}/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert httpx.get(f"{server.base_url.removesuffix('/v1')}/health", timeout=5).status_code == 200
        refused = http.post("/chat/completions", json=chat_body())
        assert_envelope(refused, 503, code="server_shutting_down")
        assert refused.headers["retry-after"] == "1"

        for thread in threads:
            thread.join(HELD_FOR)
        assert grace <= time.monotonic() - drained < grace + SLACK
        events = sse_events(answers["drain-stream"].text)
        assert answers["drain-stream"].status_code == 200 and events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "server_shutting_down"
        assert_envelope(answers["drain-json"], 503, code="server_shutting_down")
        engine.gate.set()  # the next turn drops the queued one unrun
        deadline = time.monotonic() + HELD_FOR
        while not {"drain-stream", "drain-json"} <= held.aborted:
            assert time.monotonic() < deadline, held.aborted
            time.sleep(0.02)


# -- SIGTERM on `loragate serve`, in front of a scripted vLLM ---------------------------------------
MODEL = "base-model"  # the scripted replica's
CHUNK_SECONDS = 0.1  # between the replica's chunks
SHORT, LONG = 12, 100  # words: ~1.5 s, finished within the grace; ~10 s, ended by it
GRACE = 3.0


class Replies(FakeVllm):
    """A replica whose answer has as many words as the user's message says."""

    def _chat(self, body: dict[str, Any]) -> httpx.Response:
        self.reply = " ".join(["word"] * int(body["messages"][-1]["content"]))
        return super()._chat(body)


@pytest.fixture
async def replica() -> AsyncIterator[Cluster]:
    cluster = Cluster(1)
    cluster.replicas = {"http://replica": Replies(base=MODEL, delay=CHUNK_SECONDS)}
    await cluster.listen()
    yield cluster
    await cluster.close()


def request(
    body: dict[str, Any], request_id: str, method: str = "POST", path: str = "/v1/chat/completions"
) -> bytes:
    content = json.dumps(body).encode() if method == "POST" else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {API_KEY}\r\n"
        f"content-type: application/json\r\nx-request-id: {request_id}\r\n"
        f"content-length: {len(content)}\r\n\r\n"
    )
    return head.encode() + content


def words(count: int, stream: bool = True) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": str(count)}], "stream": stream}


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP/1.1 responses one after the other on a connection (Content-Length or chunked bodies)."""
    out = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        if "content-length" in headers:
            size = int(headers["content-length"])
            body, raw = raw[:size], raw[size:]
        else:
            body = b""
            while True:
                size_line, _, raw = raw.partition(b"\r\n")
                size = int(size_line, 16)
                body, raw = body + raw[:size], raw[size + 2 :]
                if size == 0:
                    break
        out.append((int(status_line.split()[1]), headers, body))
    return out


async def serve(tmp_path: Path, port: int, upstream: str) -> subprocess.Popen[bytes]:
    args = [
        sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--log-level", "warning",
        "--engine", "vllm", "--upstream", upstream, "--model-name", MODEL, "--health-interval", "0.2",
        "--shutdown-grace", str(GRACE), "--ledger-url", f"sqlite:///{tmp_path}/usage.db",
        "--data-dir", str(tmp_path), "--keys-file", str(tmp_path / "keys.json"),
        "--registry-dir", str(tmp_path / "registry"), "--prompts-dir", str(tmp_path / "prompts"),
    ]  # fmt: skip
    env = {**os.environ, "LORAGATE_API_KEY": API_KEY}
    with (tmp_path / "gateway.log").open("wb") as log:
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + HELD_FOR
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(f"http://127.0.0.1:{port}/ready")).status_code == 200:
                    return process
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (
                tmp_path / "gateway.log"
            ).read_text()
            await asyncio.sleep(0.1)


async def test_sigterm_drains_then_exits_with_the_ledger_written(tmp_path: Path, replica: Cluster) -> None:
    port = free_port()
    process = await serve(tmp_path, port, replica.urls[0])
    try:
        # One connection: a short stream, then (pipelined behind it) a new request and /ready.
        short_reader, short_writer = await asyncio.open_connection("127.0.0.1", port)
        short_writer.write(
            request(words(SHORT), "short")
            + request(words(SHORT), "pipelined")
            + request({}, "ready", method="GET", path="/ready")
        )
        long_reader, long_writer = await asyncio.open_connection("127.0.0.1", port)
        long_writer.write(request(words(LONG), "long"))
        json_reader, json_writer = await asyncio.open_connection("127.0.0.1", port)
        json_writer.write(request(words(LONG, stream=False), "long-json"))
        # Both streams are under way: what they sent so far is kept.
        short_raw = await asyncio.wait_for(short_reader.readuntil(b"data: "), HELD_FOR)
        long_raw = await asyncio.wait_for(long_reader.readuntil(b"data: "), HELD_FOR)
        while len(replica[0].bodies_sent("/v1/chat/completions")) < 3:
            await asyncio.sleep(0.02)

        process.send_signal(signal.SIGTERM)
        terminated = time.monotonic()
        await asyncio.sleep(0.5)
        with pytest.raises(ConnectionRefusedError):  # the listener is closed
            await asyncio.open_connection("127.0.0.1", port)

        short_raw += await asyncio.wait_for(short_reader.readuntil(b"data: [DONE]"), HELD_FOR)
        finished = time.monotonic() - terminated
        short = responses(short_raw + await asyncio.wait_for(short_reader.read(), HELD_FOR))
        long = responses(long_raw + await asyncio.wait_for(long_reader.read(), HELD_FOR))
        json_answer = responses(await asyncio.wait_for(json_reader.read(), HELD_FOR))
        ended = time.monotonic() - terminated
        for writer in (short_writer, long_writer, json_writer):
            writer.close()
        returncode = await asyncio.to_thread(process.wait, HELD_FOR)
    finally:
        if process.poll() is None:
            process.kill()
    log = (tmp_path / "gateway.log").read_text()
    assert returncode in (0, -signal.SIGTERM), log

    # The short stream finished within the grace; behind it, the new request and /ready got 503.
    (status, _, body), (refused_status, refused_headers, refused_body), (ready_status, _, ready_body) = short
    events = sse_events(body.decode())
    assert status == 200 and events[-1] == "[DONE]" and not any("error" in e for e in events[:-1])
    assert finished < GRACE
    assert refused_status == 503 and refused_headers["retry-after"] == "1"
    assert json.loads(refused_body)["error"]["code"] == "server_shutting_down"
    assert ready_status == 503 and json.loads(ready_body)["status"] == "draining"

    # The long ones were ended when the grace ran out: an error event and [DONE], or a 503.
    assert GRACE <= ended < GRACE + SLACK + 1.0
    ((status, _, body),) = long
    events = sse_events(body.decode())
    assert status == 200 and events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "server_shutting_down"
    ((status, _, body),) = json_answer
    assert status == 503 and json.loads(body)["error"]["code"] == "server_shutting_down"
    long_bodies = [b for b in replica[0].bodies if len(b.parts) > LONG]
    assert len(long_bodies) == 2 and all(b.sent < len(b.parts) for b in long_bodies)  # the replica was let go

    # The ledger, flushed at exit, holds every answer it sent.
    with sqlite3.connect(tmp_path / "usage.db") as db:
        rows = db.execute("SELECT request_id, status, error_type, completion_tokens FROM usage_records")
        records = {request_id: (status, error, tokens) for request_id, status, error, tokens in rows}
    assert records["short"] == (200, None, SHORT)
    assert records["pipelined"][:2] == (503, "service_unavailable")
    assert records["long"][:2] == (200, "service_unavailable")
    assert records["long-json"][:2] == (503, "service_unavailable")
