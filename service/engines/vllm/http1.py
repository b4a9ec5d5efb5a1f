"""HTTP/1.1 on asyncio, with httptools' C parser: the vLLM hop's default ``UpstreamClient``.

The gateway relays every chat request to vLLM, so the client's own cost per request is added
to every answer. CPU per request on this project's 2-vCPU host, one-token streams one after
another from a bare upstream, through httpx's Request and Response: httpcore (httpx's own)
0.95-1.08 ms, aiohttp 0.44-0.59 ms, this transport 0.27-0.32 ms, and 0.23 ms by ``request``
(``exchange``), the ``UpstreamClient`` method (``upstream.py``) that all the vLLM backend's calls
use (docs/benchmarks.md). It is also an httpx transport (``handle_async_request``). It is small
because the vLLM hop needs little of a general client: ``http`` or ``https`` to a few known
servers, bodies in memory, answers read as they come. What it does:

- ``https``: TLS by asyncio's own (``create_connection(ssl=...)``), verified against one
  ``ssl.SSLContext`` made once (``tls_context``: a CA bundle, or the system's CAs) with the URL's
  host as the server name, also when the connection goes to an ``address`` found by discovery;
  plain ``http`` takes no step more than it did before;

- keeps connections alive per server, up to ``max_connections`` requests at once (then waits,
  up to the pool timeout), idle ones dropped after ``keepalive_expiry`` or when the server
  closes them;
- a kept-alive connection the server closed before answering is retried once on a new one;
  a new one that gets no answer is ``httpx.RemoteProtocolError`` (nothing was processed:
  the backend retries it on another replica, like a refused connection);
- connect and read timeouts (``httpx.ConnectTimeout``, ``httpx.ReadTimeout``); a break in the
  middle of an answer is ``httpx.ReadError``;
- the answer is read as it arrives, and the server is held back (reading paused) when the
  reader falls behind by more than ``HIGH_WATER`` bytes;
- closing an unfinished answer closes its connection: the server sees the client leave
  (vLLM aborts the request). A finished one goes back to the pool, and so does one its
  reader released at a logical end (``release_at_end``: an event stream's ``[DONE]``) once
  the body's last bytes are in; the reader does not wait for them.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import cast

import httptools
import httpx

Origin = tuple[str, int, str | None]  # the address to dial, its port, the TLS server name (None: plain)
HIGH_WATER = 256 * 1024  # bytes read ahead of the reader before the server is held back
DRAIN_GRACE = 5.0  # seconds an answer released before its end has to end, else its connection closes


class Http1Transport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        max_connections: int = 1024,
        keepalive_expiry: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._ssl = ssl_context  # made on the first https request when not given: the system's CAs
        # binds to the loop that first waits on it (asyncio's primitives bind lazily since Python 3.10)
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._open: set[_Connection] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if request.method == "HEAD":
            raise httpx.UnsupportedProtocol(f"Requests with a body only, not HEAD {url}.")
        content = request.content if isinstance(request.stream, httpx.ByteStream) else await request.aread()
        message = request_head(request.method, url.raw_path, request.headers.raw) + content
        timeouts = request.extensions.get("timeout", {})
        answer = await self.exchange(origin_of(url), message, timeouts)
        return httpx.Response(
            answer.status_code,
            headers=answer.headers,
            stream=answer,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def request(
        self,
        method: str,
        url: httpx.URL,
        content: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        timeouts: Mapping[str, float | None],
        address: str | None = None,
    ) -> Answer:
        """``exchange`` for ``method`` with ``content`` to ``url``, ``host`` and ``content-length`` added
        (``UpstreamClient.request``: the answer is an ``UpstreamReply``). ``address``: dial it instead
        of ``url``'s host, which stays the ``host`` header and the TLS server name."""
        head = [*headers, (b"host", url.netloc), (b"content-length", b"%d" % len(content))]
        message = request_head(method, url.raw_path, head) + content
        return await self.exchange(origin_of(url, address), message, timeouts)

    async def exchange(self, origin: Origin, message: bytes, timeouts: Mapping[str, float | None]) -> Answer:
        """Send ``message`` (a request's head and body, as ``request_head`` writes it) to ``origin``.

        Returns once the answer's head is in. This is ``handle_async_request`` without httpx's
        Request and Response objects, which cost about as much CPU as the exchange itself:
        the vLLM backend's calls come here directly (by ``request``).
        """
        await self._acquire(timeouts.get("pool"))
        connection = self._take_idle(origin)
        try:
            while True:
                fresh = connection is None
                if connection is None:
                    connection = await self._connect(origin, timeouts.get("connect"))
                try:
                    await connection.send(message, timeouts.get("read"))
                    break
                except _NoAnswer:
                    if fresh:
                        hint = "" if origin[2] else " (is it an https server?)"
                        raise httpx.RemoteProtocolError(
                            f"{origin[0]}:{origin[1]} closed the connection without answering{hint}."
                        ) from None
                    connection = None  # a kept-alive connection the server had closed: once more, anew
        except BaseException:  # a timeout, a cancelled request: the connection's state is unknown
            if connection is not None:
                connection.close()
            self._slots.release()
            raise
        return Answer(self, connection, timeouts.get("read"))

    async def aclose(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._idle.clear()

    async def _acquire(self, timeout: float | None) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # free: no wait, no timer
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError:
            raise httpx.PoolTimeout(f"All {self._max_connections} connections stayed busy.") from None

    def _take_idle(self, key: Origin) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to have been closed
            if not connection.closed and now - connection.idle_since < self._keepalive_expiry:
                return connection
            connection.close()
        return None

    async def _connect(self, key: Origin, timeout: float | None) -> _Connection:
        host, port, server_name = key
        tls = None if server_name is None else self._tls()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, key), host, port, ssl=tls, server_hostname=server_name
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"No connection to {host}:{port} in {timeout} s.") from None
        except ssl.SSLError as exc:  # before OSError, its base: the reason is TLS's, not the network's
            raise httpx.ConnectError(f"TLS with {server_name} at {host}:{port} failed: {exc}") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"No connection to {host}:{port}: {exc}") from exc
        self._open.add(connection)
        return connection

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _release(self, connection: _Connection) -> None:
        """The answer is over: its slot is free, and a connection that is still good is kept."""
        self._slots.release()
        if connection.reusable():
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.key, deque()).append(connection)
        else:
            connection.close()

    def _forget(self, connection: _Connection) -> None:
        self._open.discard(connection)
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)


class _NoAnswer(Exception):
    """The connection closed before any byte of the answer came."""


class _Connection(asyncio.Protocol):
    """One TCP connection: one request at a time, its answer parsed as it arrives."""

    transport: asyncio.Transport  # set by connection_made, before create_connection returns the protocol
    _grace: asyncio.TimerHandle  # set by when_complete with _then, and read only while _then is set

    def __init__(self, pool: Http1Transport, key: Origin):
        self._pool = pool
        self.key = key  # as the pool knows it
        self.closed = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None  # set while a request is out
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._answered = False  # a byte of the answer came
        self._head_done = False
        self._keep_alive = False
        self.complete = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._then: Callable[[], None] | None = None  # see when_complete; the body is then dropped

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport's subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small writes leave at once

    def data_received(self, data: bytes) -> None:
        if self._parser is None or self.complete:  # unasked for: no good for the next request
            self.close()
            return
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._error = httpx.RemoteProtocolError(f"The server's answer is not HTTP/1.1: {exc}")
            self.close()
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is not None and not self.complete and self._error is None:
            if not self._answered:
                self._error = _NoAnswer()
            else:
                self._error = httpx.ReadError("The server closed the connection in the middle of the answer.")
        self._pool._forget(self)
        self._wake()
        self._settle()

    # -- httptools callbacks -----------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        self.status = parser.get_status_code()
        self._keep_alive = parser.should_keep_alive()  # here: the parser forgets it once the message ends
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        if self._then is None:  # someone still reads it
            self._chunks.append(body)
            self._buffered += len(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self._settle()

    # -- the exchange --------------------------------------------------------------------
    async def send(self, message: bytes, read_timeout: float | None) -> None:
        """Send a request; return when the answer's status and headers are in."""
        self._parser = httptools.HttpResponseParser(self)
        self.status, self.headers, self._chunks, self._buffered = 0, [], [], 0
        self._answered = self._head_done = self.complete = False
        self._error = None
        if self.closed:
            raise _NoAnswer()
        self.transport.write(message)
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait(read_timeout)

    async def read(self, read_timeout: float | None) -> bytes:
        """What came of the answer's body since the last read (waiting for something); b"" at its end."""
        while True:
            if self._chunks:
                chunk = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks, self._buffered = [], 0
                if self._paused:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait(read_timeout)

    def when_complete(self, then: Callable[[], None]) -> None:
        """Call ``then`` once the answer is complete (the rest of its body is dropped unread), or the
        connection closed; it is closed if the answer is not complete within ``DRAIN_GRACE`` seconds."""
        if self.complete or self.closed:
            then()
            return
        self._then = then
        self._chunks, self._buffered = [], 0
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        self._grace = asyncio.get_running_loop().call_later(DRAIN_GRACE, self.close)

    def _settle(self) -> None:
        then, self._then = self._then, None
        if then is not None:
            self._grace.cancel()
            then()

    def reusable(self) -> bool:
        return self.complete and self._keep_alive and not self.closed and self._error is None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    async def _wait(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter, timeout)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout(f"The server sent nothing for {timeout} s."))


class Answer(httpx.AsyncByteStream):
    """An answer whose status and headers are in; its body is read as it comes (``async for``).

    Read to the end, its connection goes back to the pool; closed before that, the connection
    is closed, and the server sees the client leave (vLLM aborts the request). A reader that
    knows the answer is over before its last bytes (an event stream's ``[DONE]``) calls
    ``release_at_end`` instead, and need not wait for them.
    """

    def __init__(self, pool: Http1Transport, connection: _Connection, read_timeout: float | None):
        self._pool, self._connection, self._read_timeout = pool, connection, read_timeout
        self.status_code = connection.status
        self.headers = connection.headers
        self._released = False

    @property
    def stream(self) -> Answer:
        return self  # as ``httpx.Response.stream``

    def __aiter__(self) -> Answer:
        return self  # an iterator, not a generator: one left unfinished needs no finalising

    async def __anext__(self) -> bytes:
        chunk = await self._connection.read(self._read_timeout)
        if chunk:
            return chunk
        await self.aclose()  # read to the end: the connection goes back to the pool at once
        raise StopAsyncIteration

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    def release_at_end(self) -> None:
        """The reader needs no more of the body: the connection goes back to the pool when the
        answer's end is in (closed if it does not come within ``DRAIN_GRACE`` seconds)."""
        if not self._released:
            self._released = True
            self._connection.when_complete(partial(self._pool._release, self._connection))

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            if not self._connection.complete:
                self._connection.close()
            self._pool._release(self._connection)


def origin_of(url: httpx.URL, address: str | None = None) -> Origin:
    """Where a request to ``url`` goes: ``address`` (else the URL's host), the port, and for ``https``
    the server name that TLS verifies (the URL's host)."""
    scheme = url.scheme
    if scheme == "http":
        return address or url.host, url.port or 80, None
    if scheme == "https":
        return address or url.host, url.port or 443, url.host
    raise httpx.UnsupportedProtocol(f"http:// or https:// only, not {url}.")


def request_head(method: str, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A request's line and headers, up to the blank line that ends them (the body follows)."""
    lines = [b"%s %s HTTP/1.1\r\n" % (method.encode(), target)]
    lines += [b"%s: %s\r\n" % pair for pair in headers]
    return b"".join(lines) + b"\r\n"
