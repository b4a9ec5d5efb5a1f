"""The gateway's HTTP protocol: what a response writes in one pass of the event loop leaves in one write.

Each write wakes the client; the head with the first body bytes, and a short answer whole,
save the client (and, on a small host, the gateway's core) a wake-up each.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
from starlette.types import Receive, Scope, Send

from service.http_server import GatewayHttpProtocol, PassWriteTransport
from tests.conftest import LiveServer

HANG_GUARD = 30.0  # seconds: only a broken server makes a test wait this long
GO_ON = threading.Event()  # the test app's next step waits for this: the test sets it (``go_on``)


class Recorder:
    """The part of ``asyncio.Transport`` the proxy uses, recording what reaches the socket."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


async def test_writes_of_one_pass_leave_together_at_its_end() -> None:
    socket_side = Recorder()
    transport = PassWriteTransport(socket_side, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(bytearray(b"data: 1\n\n"))
    assert socket_side.writes == [] and transport.get_write_buffer_size() == 28
    await asyncio.sleep(0)  # the pass ends
    assert socket_side.writes == [b"HTTP/1.1 200 OK\r\n\r\ndata: 1\n\n"]
    transport.write(b"data: 2\n\n")
    await asyncio.sleep(0)
    assert socket_side.writes[1:] == [b"data: 2\n\n"]


async def test_closing_sends_what_is_pending_first_and_a_closed_socket_gets_nothing() -> None:
    socket_side = Recorder()
    transport = PassWriteTransport(socket_side, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"last words")
    transport.close()
    assert socket_side.writes == [b"last words"] and socket_side.closed
    transport.write(b"too late")
    await asyncio.sleep(0)
    assert socket_side.writes == [b"last words"]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
    await send(start)
    if scope["path"] == "/stream":  # the head, a first part, then the rest once the test has read that
        await send({"type": "http.response.body", "body": b"first part", "more_body": True})
        await asyncio.to_thread(GO_ON.wait, 2 * HANG_GUARD)
        await send({"type": "http.response.body", "body": b"rest", "more_body": False})
    elif scope["path"] == "/slow-bookkeeping":  # the answer, then work holding the loop till the test ends
        await send({"type": "http.response.body", "body": b"whole answer", "more_body": False})
        GO_ON.wait(2 * HANG_GUARD)  # blocks the event loop
    else:
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with LiveServer(app=app, ready_path="/ready") as live:
        protocol = live.server.config.http_protocol_class
        assert issubclass(protocol, GatewayHttpProtocol), "uvicorn's own protocol: see test_uvicorn_canary.py"
        yield live


@pytest.fixture
def go_on() -> Iterator[threading.Event]:
    """What lets the test app go on; set at the end in any case, so that no request is left waiting."""
    GO_ON.clear()
    yield GO_ON
    GO_ON.set()


def _get(server: LiveServer, path: str) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=HANG_GUARD)
    connection.sendall(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
    return connection


def test_the_head_leaves_with_the_first_body_bytes(server: LiveServer, go_on: threading.Event) -> None:
    with _get(server, "/stream") as connection:
        first = connection.recv(65536)  # one write: one segment on the loopback
        assert first.startswith(b"HTTP/1.1 200 OK") and first.endswith(b"a\r\nfirst part\r\n")
        go_on.set()
        rest = b""
        while not rest.endswith(b"0\r\n\r\n"):
            rest += connection.recv(65536)
        assert rest == b"4\r\nrest\r\n0\r\n\r\n"


def test_a_complete_answer_leaves_before_the_app_is_done(server: LiveServer, go_on: threading.Event) -> None:
    with _get(server, "/slow-bookkeeping") as connection:
        answer = b""
        while not answer.endswith(b"0\r\n\r\n"):
            answer += connection.recv(65536)  # the app holds the loop until the test ends: no waiting for it
    assert answer.endswith(b"c\r\nwhole answer\r\n0\r\n\r\n")
