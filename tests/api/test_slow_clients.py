"""Slow and oversized clients on a live uvicorn with the gateway's protocol (``server_options``).

A client that dribbles its request head or body (slowloris) gets 408 and is closed; a head over
``max_header_bytes`` gets 431; connections past ``max_connections`` get 503. A kept-alive client
idle between requests, and a client waiting for the gateway to read its body, are not cut.
Raw sockets on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from service import http_server
from service.config import Settings
from service.http_server import GatewayHttpProtocol, fit_file_limit, server_options
from tests.conftest import LiveServer

HEADER_TIMEOUT = BODY_TIMEOUT = 1.0  # a loaded 2-core host can stall a client thread for a good part of 0.5 s
KEEP_ALIVE = 3.0
SLOW_READ = 1.7  # seconds /slow-read waits before it reads the body: longer than BODY_TIMEOUT
WAIT = 8.0  # the longest any test waits for the server: generous for a loaded 2-core host
ENVELOPE_KEYS = {"message", "type", "param", "code"}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers every request with the length of its body, once it has read all of it."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow-read":
        await asyncio.sleep(SLOW_READ)
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    answer = str(size).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


class LimitedServer(LiveServer):
    """``LiveServer`` on the test app, with the uvicorn options ``loragate serve`` derives from settings."""

    def __init__(self, settings: Settings):
        super().__init__(app=app, ready_path="/ready")
        options = server_options(settings)
        assert options["http"] != "httptools", "uvicorn's own protocol: see tests/api/test_uvicorn_canary.py"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)


@pytest.fixture(scope="module")
def server() -> Iterator[LimitedServer]:
    settings = Settings(
        header_timeout=HEADER_TIMEOUT,
        body_timeout=BODY_TIMEOUT,
        keep_alive_timeout=KEEP_ALIVE,
        max_header_bytes=4096,
    )
    with LimitedServer(settings) as live:
        yield live


def _connect(server: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)


def _until_closed(connection: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection (or the deadline passes: the test fails)."""
    received = b""
    while time.monotonic() < deadline:
        connection.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data = connection.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data
    raise AssertionError(f"the connection is still open; received {received[:200]!r}")


def _dribble(connection: socket.socket, first: bytes, piece: bytes) -> tuple[bytes, float]:
    """Send ``first``, then ``piece`` every 0.1 s until the server answers; what it sent, and when."""
    started = time.monotonic()
    connection.sendall(first)
    while time.monotonic() - started < WAIT:
        readable, _, _ = select.select([connection], [], [], 0.1)
        if readable:  # stop sending first: bytes sent to a closed socket may reset the connection
            answered = time.monotonic() - started
            return _until_closed(connection, started + WAIT), answered
        connection.sendall(piece)
    raise AssertionError("the server neither answered nor closed the connection")


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def _response(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body, read off a connection that stays open."""
    raw = b""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if b"\r\n\r\n" in raw:
            status, headers, body = _parse(raw)
            if len(body) >= int(headers["content-length"]):
                return status, headers, body
        data = connection.recv(65536)
        assert data, f"closed early; received {raw!r}"
        raw += data
    raise AssertionError(f"no complete response; received {raw!r}")


def _error(raw: bytes, status: int, code: str) -> dict[str, Any]:
    """``raw`` is one response: ``status`` with an OpenAI error envelope, closing the connection."""
    got, headers, body = _parse(raw)
    assert got == status, raw[:300]
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == ENVELOPE_KEYS and error["code"] == code
    assert error["type"] == "invalid_request_error" and error["message"]
    return dict(error)


def test_a_client_that_dribbles_its_head_gets_408_and_is_closed(server: LimitedServer) -> None:
    with _connect(server) as connection:
        raw, answered = _dribble(connection, b"GET /ready HTTP/1.1\r\nhost: test\r\n", b"x-more: 1\r\n")
    error = _error(raw, 408, "request_timeout")
    assert "head" in error["message"]
    assert HEADER_TIMEOUT * 0.9 <= answered < WAIT


def test_a_client_that_dribbles_its_body_gets_408_and_is_closed(server: LimitedServer) -> None:
    head = b"POST /upload HTTP/1.1\r\nhost: test\r\ncontent-length: 1000\r\n\r\n"
    with _connect(server) as connection:
        raw, answered = _dribble(connection, head + b"x", b"x")
    error = _error(raw, 408, "request_timeout")
    assert "body" in error["message"]
    assert BODY_TIMEOUT * 0.9 <= answered < WAIT


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server: LimitedServer) -> None:
    started = time.monotonic()
    with _connect(server) as connection:
        assert _until_closed(connection, started + WAIT) == b""
    assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9


def test_a_kept_alive_connection_idles_under_keep_alive_not_the_head_timeout(server: LimitedServer) -> None:
    with _connect(server) as connection:
        connection.sendall(b"POST /upload HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\n\r\nhello")
        assert _response(connection)[::2] == (200, b"5")
        time.sleep(1.5 * HEADER_TIMEOUT)  # idle: past the head timeout, well within keep-alive
        connection.sendall(b"GET /ready HTTP/1.1\r\nhost: test\r\n\r\n")
        assert _response(connection)[::2] == (200, b"0")
        answered = time.monotonic()
        assert _until_closed(connection, answered + KEEP_ALIVE + WAIT) == b""  # keep-alive ends it
    assert time.monotonic() - answered >= KEEP_ALIVE * 0.9


def test_a_body_the_gateway_is_slow_to_read_is_not_timed_out(server: LimitedServer) -> None:
    """Flow control: the server stops reading at 64 KiB until the app reads; the client is not late."""
    body = b"x" * 1_000_000
    head = b"POST /slow-read HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n\r\n" % len(body)
    with _connect(server) as connection:
        connection.sendall(head + body)
        assert _response(connection)[::2] == (200, str(len(body)).encode())


def test_a_client_waiting_for_100_continue_is_not_timed_out(server: LimitedServer) -> None:
    head = b"POST /slow-read HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
    with _connect(server) as connection:
        connection.sendall(head)
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            data = connection.recv(1)  # byte by byte: nothing of the final answer is read here
            assert data, "closed before 100 Continue"
            interim += data
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        time.sleep(BODY_TIMEOUT / 2)  # the client's full body_timeout starts at the 100 Continue
        connection.sendall(b"hello")
        assert _response(connection)[::2] == (200, b"5")


def test_a_head_over_max_header_bytes_gets_431(server: LimitedServer) -> None:
    with _connect(server) as connection:  # never completed: refused as it grows, not at the timeout
        connection.sendall(b"GET /ready HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * 8192)
        error = _error(_until_closed(connection, time.monotonic() + WAIT), 431, "headers_too_large")
    assert "4096 bytes" in error["message"]
    with _connect(server) as connection:  # complete, in one piece
        connection.sendall(b"GET /ready HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * 8192 + b"\r\n\r\n")
        _error(_until_closed(connection, time.monotonic() + WAIT), 431, "headers_too_large")
    with _connect(server) as connection:  # under the limit: served
        connection.sendall(b"GET /ready HTTP/1.1\r\nhost: test\r\nx-fine: " + b"a" * 2048 + b"\r\n\r\n")
        assert _response(connection)[0] == 200


def test_connections_past_max_connections_get_503_and_the_server_stays_up() -> None:
    settings = Settings(max_connections=2, header_timeout=WAIT, keep_alive_timeout=WAIT)
    with LimitedServer(settings) as live:
        held: list[socket.socket] = []
        try:
            for _ in range(2):  # served, and kept alive: each holds a connection
                deadline = time.monotonic() + WAIT  # until the readiness probe's connection is gone
                while True:
                    connection = _connect(live)
                    connection.sendall(b"GET /ready HTTP/1.1\r\nhost: test\r\n\r\n")
                    raw = b""
                    while b"\r\n\r\n" not in raw and (data := connection.recv(65536)):
                        raw += data
                    if _parse(raw)[0] == 200:
                        held.append(connection)
                        break
                    connection.close()
                    assert time.monotonic() < deadline, "the server never had a free connection"
            with _connect(live) as third:
                third.sendall(b"GET /ready HTTP/1.1\r\nhost: test\r\n\r\n")
                status, headers, _ = _parse(_until_closed(third, time.monotonic() + WAIT))
            assert status == 503 and headers["connection"] == "close"
        finally:
            for connection in held:
                connection.close()
        deadline = time.monotonic() + WAIT
        while True:  # the held connections' slots come free
            with _connect(live) as connection:
                connection.sendall(b"GET /ready HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
                if _parse(_until_closed(connection, deadline))[0] == 200:
                    break
            assert time.monotonic() < deadline, "the server did not recover"
            time.sleep(0.05)


def test_serve_runs_uvicorn_with_the_connection_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import service.app
    from service.cli import serve

    calls: list[dict[str, Any]] = []

    class App:
        def drain(self) -> None:
            calls.append({"drained": True})

    def run(server: http_server.GatewayServer) -> None:
        config = server.config
        calls.append(
            {
                "limit_concurrency": config.limit_concurrency,
                "timeout_keep_alive": config.timeout_keep_alive,
                "timeout_graceful_shutdown": config.timeout_graceful_shutdown,
                "http": config.http,
            }
        )
        server.begin_drain()
        server.started = True

    monkeypatch.setattr(http_server.GatewayServer, "run", run)
    monkeypatch.setattr(service.app, "create_app", lambda settings: App())
    monkeypatch.setattr(http_server, "fit_file_limit", lambda wanted: calls.append({"files": wanted}))
    settings = Settings(
        model_path=tmp_path,
        header_timeout=3,
        body_timeout=4,
        keep_alive_timeout=6,
        max_connections=7,
        max_header_bytes=2048,
        shutdown_grace=9,
    )
    serve(settings)
    assert calls[0] == {"files": 7}
    options = calls[1]
    assert (options["limit_concurrency"], options["timeout_keep_alive"]) == (8, 6)
    assert options["timeout_graceful_shutdown"] == 9 + http_server.SHUTDOWN_MARGIN  # a backstop to the app's
    assert calls[2] == {"drained": True}  # the server tells the app when it begins to shut down
    protocol = options["http"]
    assert issubclass(protocol, GatewayHttpProtocol)
    assert (protocol.header_timeout, protocol.body_timeout, protocol.max_header_bytes) == (3, 4, 2048)


def test_the_file_limit_is_raised_as_far_as_the_hard_limit_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    limits = {"soft": 1024, "hard": 4096}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))
    monkeypatch.setattr(resource, "setrlimit", lambda _, new: limits.update(soft=new[0], hard=new[1]))
    assert fit_file_limit(1024) == 1024 + http_server.FILE_HEADROOM == limits["soft"]
    assert fit_file_limit(100) == limits["soft"]  # never lowered
    limits.update(soft=1024, hard=1100)
    assert fit_file_limit(1024) == 1100 == limits["soft"]


def test_the_protocol_s_own_limits_are_the_settings_defaults() -> None:
    """A server given the bare class (``http=GatewayHttpProtocol``) applies what ``loragate serve`` would."""
    defaults = Settings()
    protocol = server_options(defaults)["http"]
    for name in ("header_timeout", "body_timeout", "max_header_bytes"):
        assert getattr(GatewayHttpProtocol, name) == getattr(protocol, name) == getattr(defaults, name)
