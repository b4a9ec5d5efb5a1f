"""The vLLM hop's HTTP/1.1 transport, against raw sockets on 127.0.0.1 that misbehave on purpose.

What the vLLM backend relies on: httpx errors that say what happened (refused and dropped
connections before an answer are retried on another replica; a break mid-answer is not),
a body read as it arrives, an unread body's connection dropped (vLLM then aborts), kept-alive
connections reused (and one the server closed retried anew), a bounded pool, and a server
held back while the reader is behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import pytest_asyncio

from service.engines.vllm import http1
from service.engines.vllm.http1 import HIGH_WATER, Http1Transport
from tests.conftest import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
pytestmark = pytest.mark.asyncio(loop_scope="function")  # a loop per test, of each kind
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    return head + await reader.readexactly(length)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest_asyncio.fixture(loop_scope="function")
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        port = free_port()
        servers.append(await asyncio.start_server(handler, "127.0.0.1", port))
        return f"http://127.0.0.1:{port}/v1/chat/completions"

    yield start
    for server in servers:
        server.close()


async def _post(transport: Http1Transport, url: str, read: float = 5.0, pool: float = 5.0) -> httpx.Response:
    timeout = httpx.Timeout(5.0, read=read, pool=pool).as_dict()
    request = httpx.Request("POST", url, content=b'{"x": 1}', extensions={"timeout": timeout})
    return await transport.handle_async_request(request)


async def test_the_body_arrives_as_the_server_sends_it(serve: Callable[[Handler], Awaitable[str]]) -> None:
    sent_second = asyncio.Event()
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        writer.write(HEAD + _chunk(b"data: one\n\n"))
        await writer.drain()
        await sent_second.wait()
        writer.write(_chunk(b"data: two\n\n") + b"0\r\n\r\n")
        await writer.drain()

    transport = Http1Transport()
    response = await _post(transport, await serve(handler))
    assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
    body = aiter(response.stream)
    assert await anext(body) == b"data: one\n\n"  # before the server has sent the rest
    sent_second.set()
    assert b"".join([chunk async for chunk in body]) == b"data: two\n\n"
    assert seen[0].startswith(b"POST /v1/chat/completions HTTP/1.1") and seen[0].endswith(b'{"x": 1}')
    await response.aclose()
    await transport.aclose()


async def test_a_refused_connection_is_a_connect_error() -> None:
    transport = Http1Transport()
    with pytest.raises(httpx.ConnectError):
        await _post(transport, f"http://127.0.0.1:{free_port()}/v1/chat/completions")
    await transport.aclose()


async def test_a_scheme_other_than_http_or_https_is_refused() -> None:
    transport = Http1Transport()
    with pytest.raises(httpx.UnsupportedProtocol):
        await transport.request("POST", httpx.URL("ftp://vllm.internal/v1/x"), b"{}", [], {})
    await transport.aclose()


async def test_a_connection_dropped_before_the_answer_is_retryable(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()  # a server restarting, or a kept-alive connection it had closed

    transport = Http1Transport()
    with pytest.raises(httpx.RemoteProtocolError):  # in the backend's retryable set, with connect errors
        await _post(transport, await serve(handler))
    await transport.aclose()


async def test_a_break_in_the_middle_of_the_body_is_a_read_error(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(HEAD + _chunk(b"data: one\n\n"))
        await writer.drain()
        writer.close()  # the chunked body never ends

    transport = Http1Transport()
    response = await _post(transport, await serve(handler))
    with pytest.raises(httpx.ReadError):
        async for _ in response.stream:
            pass
    await transport.aclose()


async def test_a_silent_server_is_a_read_timeout(serve: Callable[[Handler], Awaitable[str]]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    transport = Http1Transport()
    with pytest.raises(httpx.ReadTimeout):
        await _post(transport, await serve(handler), read=0.2)
    await transport.aclose()


async def test_closing_an_unread_body_drops_the_connection(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    gone = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(HEAD + _chunk(b"data: one\n\n"))
        await writer.drain()
        if await reader.read() == b"":  # EOF: the client closed its end
            gone.set()

    transport = Http1Transport()
    response = await _post(transport, await serve(handler))
    await response.aclose()
    await asyncio.wait_for(gone.wait(), timeout=5)
    await transport.aclose()


def _answer(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n" % len(body) + b"".join(extra)
    return head + b"\r\n" + body


async def test_a_kept_alive_connection_serves_the_next_request(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    connections = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while not reader.at_eof():
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(_answer(b"ok"))
            await writer.drain()

    transport = Http1Transport()
    url = await serve(handler)
    for _ in range(3):
        response = await _post(transport, url)
        assert await response.aread() == b"ok"
    assert len(connections) == 1
    await transport.aclose()


async def test_connection_close_is_not_reused(serve: Callable[[Handler], Awaitable[str]]) -> None:
    connections = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await _read_request(reader)
        writer.write(_answer(b"ok", b"connection: close\r\n"))
        await writer.drain()
        writer.close()

    transport = Http1Transport()
    url = await serve(handler)
    for _ in range(2):
        assert await (await _post(transport, url)).aread() == b"ok"
    assert len(connections) == 2
    await transport.aclose()


async def test_a_kept_alive_connection_closed_before_the_answer_is_retried_anew(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """The race every keep-alive client has: the server closes an idle connection as the request goes out."""
    requests_per_connection: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests_per_connection.append(0)
        mine = len(requests_per_connection) - 1
        while True:
            await _read_request(reader)
            requests_per_connection[mine] += 1
            if mine == 0 and requests_per_connection[mine] == 2:
                writer.close()  # read, never answered: the server's idle timeout fired
                return
            writer.write(_answer(b"ok %d" % mine))
            await writer.drain()

    transport = Http1Transport()
    url = await serve(handler)
    assert await (await _post(transport, url)).aread() == b"ok 0"
    assert await (await _post(transport, url)).aread() == b"ok 1"  # sent twice: on the old, then a new one
    assert requests_per_connection == [2, 1]
    await transport.aclose()


async def test_requests_beyond_the_pool_wait_for_a_free_connection(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            writer.write(HEAD + _chunk(b"data: one\n\n") + b"0\r\n\r\n")
            await writer.drain()

    transport = Http1Transport(max_connections=1)
    url = await serve(handler)
    first = await _post(transport, url)
    with pytest.raises(httpx.PoolTimeout):
        await _post(transport, url, pool=0.2)  # the one connection is still in use
    waiting = asyncio.ensure_future(_post(transport, url))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    assert await first.aread() == b"data: one\n\n"  # read to the end: the connection is free
    second = await asyncio.wait_for(waiting, timeout=5)
    assert await second.aread() == b"data: one\n\n"
    await transport.aclose()


async def test_a_reader_that_falls_behind_holds_the_server_back(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    piece = b"x" * 65536
    pieces = 64  # 4 MiB: far more than the transport reads ahead

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(HEAD)
        for _ in range(pieces):
            writer.write(_chunk(piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    transport = Http1Transport()
    response = await _post(transport, await serve(handler))
    body = aiter(response.stream)
    received = len(await anext(body))
    connection = response.stream._connection  # type: ignore[attr-defined]
    async with asyncio.timeout(10):  # the reader is busy elsewhere while the server goes on sending
        while connection.transport.is_reading():
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # and it stays held back while the reader is away
    assert not connection.transport.is_reading()
    read_size = 256 * 1024  # the most asyncio's transports read at once
    assert connection._buffered <= HIGH_WATER + read_size  # held back, not 4 MiB read into memory
    received += sum([len(chunk) async for chunk in body])
    assert received == pieces * len(piece)  # nothing lost on the way
    await transport.aclose()


async def test_a_bad_answer_is_a_protocol_error(serve: Callable[[Handler], Awaitable[str]]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    transport = Http1Transport()
    with pytest.raises(httpx.RemoteProtocolError, match="not HTTP"):
        await _post(transport, await serve(handler))
    await transport.aclose()


async def test_an_answer_released_before_its_end_goes_back_to_the_pool_when_the_end_comes(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """An event stream's reader is done at ``[DONE]``; the chunked body's last bytes may come later."""
    connections, send_end = [], asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while True:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(HEAD + _chunk(b"data: [DONE]\n\n"))
            await writer.drain()
            await send_end.wait()
            writer.write(_chunk(b"data: late\n\n") + b"0\r\n\r\n")  # dropped unread
            await writer.drain()

    transport = Http1Transport(max_connections=1)
    url = await serve(handler)
    first = await transport.request("POST", httpx.URL(url), b"{}", [], httpx.Timeout(5.0).as_dict())
    assert await anext(aiter(first)) == b"data: [DONE]\n\n"
    first.release_at_end()
    await first.aclose()  # what the backend's exit does next: no effect on a released answer
    waiting = asyncio.ensure_future(_post(transport, url))
    await asyncio.sleep(0.1)
    assert not waiting.done()  # the only connection is still busy with the first answer's end
    send_end.set()
    second = await asyncio.wait_for(waiting, timeout=5)
    assert await second.aread() == b"data: [DONE]\n\ndata: late\n\n"  # read whole this time
    assert len(connections) == 1  # the same connection, kept alive
    await transport.aclose()


async def test_an_answer_released_before_an_end_that_never_comes_closes_its_connection(
    serve: Callable[[Handler], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "DRAIN_GRACE", 0.2)
    connections, client_left = [], asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await _read_request(reader)
        writer.write(HEAD + _chunk(b"data: [DONE]\n\n"))  # and never the end of the body
        await writer.drain()
        await reader.read()  # until the client closes
        client_left.set()
        writer.close()

    transport = Http1Transport(max_connections=1)
    url = await serve(handler)
    first = await _post(transport, url)
    assert await anext(aiter(first.stream)) == b"data: [DONE]\n\n"
    first.stream.release_at_end()  # type: ignore[attr-defined]
    second = await asyncio.wait_for(_post(transport, url), timeout=5)  # its slot freed after the grace
    assert await anext(aiter(second.stream)) == b"data: [DONE]\n\n"
    assert len(connections) == 2
    await asyncio.wait_for(client_left.wait(), timeout=5)
    await second.aclose()
    await transport.aclose()
