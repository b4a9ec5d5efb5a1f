"""uvicorn's HTTP/1.1 protocol (httptools); what a response writes in one event loop pass, in one write.

uvicorn writes a response's head the moment the app sends ``http.response.start``, and each
body part as it comes. Each write is a syscall and wakes the client; on a host with few
cores, the woken client is often run on the gateway's own core and holds it until it has
read what came and waits again (after an idle gap, longer than the gateway needs for the rest
of the answer; docs/benchmarks.md has what a wake-up costs on the benchmark VM). So writes
wait for the end of the loop's current pass, as uvloop does itself when a socket is busy
and as Node's ``http`` does with a response's head: the head leaves with the first body
bytes, and the events of a one-token answer in one write.
Nothing waits for more than the pass that produced it.

It also bounds what a slow or oversized client holds, which uvicorn's httptools protocol does
not: it waits for a request's head and body as long as bytes keep coming, and keeps any size of
head (slowloris). The head must be in within ``header_timeout`` (from the connection, or from
the first byte of a later request: between requests uvicorn's ``timeout_keep_alive`` governs),
the body within ``body_timeout`` of the head, the head within ``max_header_bytes``; otherwise
408 or 431, with an OpenAI error envelope when no answer has started, and the connection closes.
The body's clock does not run out while the gateway itself is not reading (flow control, a
pipelined request waiting its turn, ``Expect: 100-continue`` not yet answered).
``server_options`` gives ``uvicorn.run`` these and the connection cap (``max_connections``).

All this rests on uvicorn's private httptools protocol: its parser callbacks, ``on_response_complete``,
``cycle``, ``flow.read_paused``, ``server_state.default_headers``, ``STATUS_LINE``, and ``self.app`` as
the app ``on_headers_complete`` runs. pyproject.toml pins the uvicorn releases this was tested on;
``uvicorn_internals_missing`` checks them, and ``server_options`` falls back to uvicorn's own protocol,
with a warning, when something is missing (docs/development.md, "Upgrading uvicorn").
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from .config import Settings
from .errors import HeadersTooLargeError, LoragateError, RequestTimeoutError

# uvicorn's private protocol, imported once (there: if uvicorn moves it, server_options falls back)
from .uvicorn_canary import HttpToolsProtocol, httptools_impl, uvicorn_internals_missing

log = logging.getLogger(__name__)

WAIT_POLL = 0.1  # seconds between looks at a connection whose client waits for the gateway (rare)

# What the connection is reading: nothing yet, a request's head, its body, nothing (between requests).
NEW, HEAD, BODY, IDLE, UPGRADED = "new", "head", "body", "idle", "upgraded"


if TYPE_CHECKING:
    _Transport = asyncio.Transport  # what the proxy stands for: it forwards the rest (__getattr__)
else:
    _Transport = object


class PassWriteTransport(_Transport):
    """An ``asyncio.Transport`` proxy whose writes go out together at the end of the loop's current pass."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))  # a copy if the caller may reuse its buffer

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        pending = self._pending
        if pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """``uvicorn.run(app, http=GatewayHttpProtocol)``: httptools, writes sent once per loop pass, and
    deadlines and a size cap for reading requests (``gateway_protocol`` sets them from settings).
    """

    header_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 30.0
    max_header_bytes: ClassVar[int] = 32_768

    # the parameter narrowed as uvicorn's HttpToolsProtocol narrows asyncio.Protocol's (its own ignore)
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._writes = PassWriteTransport(transport, asyncio.get_running_loop())
        self._phase = NEW
        self._timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # of the head being read, counted per read (see data_received)
        self._head_bound = math.inf  # what the head just completed can be at most
        super().connection_made(self._writes)
        self._timer = self.loop.call_later(self.header_timeout, self._expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Timers are set per read, not per parser event: a request that arrives whole arms none."""
        before = self._phase
        carried = self._head_bytes if before in (NEW, HEAD) else 0
        # A read that starts in a body may end with the next head: its bytes are not all the head's.
        self._head_bound = carried + len(data) if before != BODY else math.inf
        super().data_received(data)
        if self._phase == HEAD:
            self._head_bytes = carried + (len(data) if before != BODY else 0)
            if self._head_bytes > self.max_header_bytes and not self.transport.is_closing():
                self._refuse(self._too_large())
                return
        if self._phase != before and not (before == NEW and self._phase == HEAD):
            self._arm()  # a new connection's first head is due header_timeout after it connected

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = HEAD

    def on_headers_complete(self) -> None:
        self._phase = BODY
        if self._head_bound > self.max_header_bytes and self._head_size() > self.max_header_bytes:
            app, self.app = self.app, _answer(self._too_large())  # as uvicorn answers its 503s
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = IDLE

    def on_response_complete(self) -> None:
        self._writes.flush()  # a complete answer leaves now, not after the app's bookkeeping
        super().on_response_complete()

    def handle_websocket_upgrade(self) -> None:
        self._phase = UPGRADED
        self._cancel_timer()
        super().handle_websocket_upgrade()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _too_large(self) -> HeadersTooLargeError:
        return HeadersTooLargeError(f"The request head is larger than {self.max_header_bytes} bytes.")

    def _arm(self) -> None:
        self._cancel_timer()
        timeout = self.header_timeout if self._phase == HEAD else self.body_timeout
        if self._phase in (HEAD, BODY) and not self.transport.is_closing():
            self._timer = self.loop.call_later(timeout, self._expired)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._phase in (IDLE, UPGRADED):
            return
        if self._phase == NEW:  # never sent a byte: closed as an idle kept-alive connection is
            self.transport.close()
            return
        if self._client_waits():  # its clock starts again once the gateway is ready for it
            self._timer = self.loop.call_later(WAIT_POLL, self._wait_over)
            return
        part = "head" if self._phase == HEAD else "body"
        log.info("%s: closed a connection whose request %s did not arrive in time", self.client, part)
        timeout = self.header_timeout if self._phase == HEAD else self.body_timeout
        self._refuse(RequestTimeoutError(f"The request {part} did not arrive within {timeout:g} seconds."))

    def _client_waits(self) -> bool:
        """The client cannot send: the gateway is not reading, owes a 100 Continue, or is still answering."""
        cycle = self.cycle
        return bool(self.flow.read_paused) or (
            cycle is not None
            and (
                (self._phase == HEAD and not cycle.response_complete)  # still answering the one before
                or (self._phase == BODY and cycle.waiting_for_100_continue)
            )
        )

    def _wait_over(self) -> None:
        """A full timeout from when the client can send again (not from when its last one ran out)."""
        self._timer = None
        if self.transport.is_closing() or self._phase not in (HEAD, BODY):
            return
        if self._client_waits():
            self._timer = self.loop.call_later(WAIT_POLL, self._wait_over)
        else:
            self._arm()

    def _refuse(self, error: LoragateError) -> None:
        """Answer ``error`` if no answer to this connection's requests is under way, and close."""
        self._cancel_timer()
        cycle = self.cycle
        if cycle is None or (cycle.response_complete if self._phase == HEAD else not cycle.response_started):
            body = json.dumps(error.envelope()).encode()
            head = [httptools_impl.STATUS_LINE[error.status_code]]
            head += [b"%s: %s\r\n" % header for header in self.server_state.default_headers]
            head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
            self.transport.write(b"".join([*head, b"connection: close\r\n\r\n", body]))
        self.transport.close()


def _answer(error: LoragateError) -> ASGIApp:
    """An ASGI app that answers ``error`` and closes the connection."""
    body = json.dumps(error.envelope()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def gateway_protocol(
    *, header_timeout: float, body_timeout: float, max_header_bytes: int
) -> type[GatewayHttpProtocol]:
    """``GatewayHttpProtocol`` with these limits: uvicorn makes a protocol per connection from a class."""
    limits = {
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
        "max_header_bytes": max_header_bytes,
    }
    return type("GatewayHttpProtocol", (GatewayHttpProtocol,), limits)


# What GatewayHttpProtocol overrides and calls through ``super()``: name, and parameters after self.
def server_options(settings: Settings) -> dict[str, Any]:
    """The ``uvicorn.run``/``uvicorn.Config`` options for how connections are handled, from ``settings``.

    uvicorn's own httptools protocol, without the gateway's extras, if uvicorn lacks what they rely on:
    serving without them beats not serving.
    """
    http: type[asyncio.Protocol] | str
    missing = uvicorn_internals_missing()
    if missing:
        log.warning(
            "uvicorn %s changed the private API service/http_server.py uses (%s): serving with uvicorn's own"
            " httptools protocol, without one write per loop pass, request timeouts or the head size cap",
            uvicorn.__version__,
            "; ".join(missing),
        )
        http = "httptools"
    else:
        http = gateway_protocol(
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_header_bytes=settings.max_header_bytes,
        )
    return {
        "http": http,
        # uvicorn refuses a request once the open connections, its own included, reach the limit.
        "limit_concurrency": settings.max_connections + 1,
        "timeout_keep_alive": settings.keep_alive_timeout,
        # A backstop: the app itself ends the answers still running after shutdown_grace (GatewayServer).
        "timeout_graceful_shutdown": settings.shutdown_grace + SHUTDOWN_MARGIN,
    }


SHUTDOWN_MARGIN = 5.0  # seconds past shutdown_grace before uvicorn cancels what is left, unanswered


class GatewayServer(uvicorn.Server):
    """uvicorn's server, telling the app (``drain``) when it begins to shut down (SIGTERM, SIGINT).

    What a shutdown then does, in order: the app stops admitting generating requests (503) and
    ``/ready`` answers 503 (``service/admission.py``); uvicorn closes the listening socket (new
    connections are refused) and the idle connections, and lets each connection with a request in
    flight finish that answer and close (a request pipelined behind it is answered first: 503 if
    it is a generating one); ``shutdown_grace`` after the start, the app ends the answers still
    running (503, or an error event and ``[DONE]``). When the connections are closed (at the latest
    ``SHUTDOWN_MARGIN`` later, when uvicorn cancels what is left), the lifespan's shutdown closes
    the engine, then the ledger. ``tests/api/test_graceful_shutdown.py`` checks it on a real process.
    """

    def __init__(self, config: uvicorn.Config, drain: Callable[[], None]):
        super().__init__(config)
        self.begin_drain = drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.begin_drain()
        await super().shutdown(sockets)


FILE_HEADROOM = 256  # open files besides client connections: model and adapter files, upstreams, logs


def fit_file_limit(max_connections: int) -> int:
    """Raise the soft limit on open files (often 1024) to hold ``max_connections`` and the gateway's own
    files, as far as the hard limit allows: past it, ``accept`` fails before the connection cap answers.
    Returns the soft limit now in force (``resource.RLIM_INFINITY``: none).
    """
    try:
        import resource
    except ImportError:  # not a Unix: nothing to raise
        return max_connections + FILE_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FILE_HEADROOM
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "the open-file limit (%d) is below max_connections + %d: lower max_connections or raise"
            " the limit (ulimit -n)",
            target,
            FILE_HEADROOM,
        )
    return target
