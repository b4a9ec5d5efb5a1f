"""The httpx transport over aiohttp, against raw sockets on 127.0.0.1 that misbehave on purpose.

What the vLLM backend relies on: httpx errors that say what happened (refused and dropped
connections before an answer are retried on another replica; a break mid-answer is not),
a body read as it arrives, and an unread body's connection dropped (vLLM then aborts).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from service.engines.aiohttp_transport import AiohttpTransport
from tests.conftest import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
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


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        port = free_port()
        servers.append(await asyncio.start_server(handler, "127.0.0.1", port))
        return f"http://127.0.0.1:{port}/v1/chat/completions"

    yield start
    for server in servers:
        server.close()


async def _post(transport: AiohttpTransport, url: str, read: float = 5.0) -> httpx.Response:
    timeout = httpx.Timeout(5.0, read=read).as_dict()
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

    transport = AiohttpTransport()
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
    transport = AiohttpTransport()
    with pytest.raises(httpx.ConnectError):
        await _post(transport, f"http://127.0.0.1:{free_port()}/v1/chat/completions")
    await transport.aclose()


async def test_a_connection_dropped_before_the_answer_is_retryable(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()  # a server restarting, or a kept-alive connection it had closed

    transport = AiohttpTransport()
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

    transport = AiohttpTransport()
    response = await _post(transport, await serve(handler))
    with pytest.raises(httpx.ReadError):
        async for _ in response.stream:
            pass
    await transport.aclose()


async def test_a_silent_server_is_a_read_timeout(serve: Callable[[Handler], Awaitable[str]]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    transport = AiohttpTransport()
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

    transport = AiohttpTransport()
    response = await _post(transport, await serve(handler))
    await response.aclose()
    await asyncio.wait_for(gone.wait(), timeout=5)
    await transport.aclose()
