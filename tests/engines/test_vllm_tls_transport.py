"""Both upstream clients over TLS, against a TLS server with a CA made here (``trustme``).

The gateway's own client runs on uvloop in the gateway and on asyncio in the tests, whose TLS
transports differ: its cases run on both. A replica found by discovery is dialled by address
while its URL's host name stays what TLS verifies and the Host header says.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest
import trustme
import uvloop

from service.engines.vllm.failures import classify
from service.engines.vllm.http1 import Http1Transport
from service.engines.vllm.upstream import HttpxUpstream, UpstreamClient, tls_context

NAME = "vllm.test"  # the certificate's name; nothing resolves it: requests dial 127.0.0.1 by address
TIMEOUTS = httpx.Timeout(5.0).as_dict()
Client = Callable[[ssl.SSLContext], UpstreamClient]
CLIENTS: dict[str, Client] = {
    "http1": lambda tls: Http1Transport(ssl_context=tls),
    "httpx": lambda tls: HttpxUpstream(ssl_context=tls),
}


def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext]:
    """The server's context, a client context that trusts its CA, and one that trusts another CA."""
    ca, stranger = trustme.CA(), trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(NAME, "127.0.0.1").configure_cert(server)
    trusting, distrusting = ssl.create_default_context(), ssl.create_default_context()
    ca.configure_trust(trusting)
    stranger.configure_trust(distrusting)
    return server, trusting, distrusting


async def serve(tls: ssl.SSLContext | None, seen: list[bytes]) -> tuple[asyncio.Server, int]:
    """A server that answers every request with ``ok``, keeping each request's head in ``seen``;
    one that is not HTTP (a TLS hello to a plain server) gets a 400, as uvicorn answers it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while first := await reader.read(1):
                if not first.isalpha():
                    writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    return
                head = first + await reader.readuntil(b"\r\n\r\n")
                seen.append(head)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    return server, server.sockets[0].getsockname()[1]


def on_both_loops(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    for factory in (asyncio.new_event_loop, uvloop.new_event_loop):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(test())


async def get(client: UpstreamClient, url: str, address: str | None = None) -> tuple[int, bytes]:
    reply = await client.request("GET", httpx.URL(url), b"", [], TIMEOUTS, address)
    try:
        return reply.status_code, await reply.aread()
    finally:
        await reply.aclose()


@pytest.mark.parametrize("kind", CLIENTS)
def test_https_by_address_verifies_the_urls_host_name(kind: str) -> None:
    async def test() -> None:
        server_tls, trusting, _ = contexts()
        seen: list[bytes] = []
        server, port = await serve(server_tls, seen)
        client = CLIENTS[kind](trusting)
        try:
            for _ in range(2):  # the second on the kept connection
                assert await get(client, f"https://{NAME}:{port}/health", "127.0.0.1") == (200, b"ok")
            assert await get(client, f"https://127.0.0.1:{port}/health") == (200, b"ok")  # an IP SAN
        finally:
            await client.aclose()
            server.close()
        assert seen[0].lower().count(f"host: {NAME}:{port}".encode()) == 1
        assert seen[0].startswith(b"GET /health HTTP/1.1")

    on_both_loops(test) if kind == "http1" else asyncio.run(test())


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_certificate_from_an_unknown_ca_is_a_tls_failure(kind: str) -> None:
    async def test() -> None:
        server_tls, _, distrusting = contexts()
        server, port = await serve(server_tls, [])
        client = CLIENTS[kind](distrusting)
        try:
            with pytest.raises(httpx.ConnectError) as failure:
                await get(client, f"https://{NAME}:{port}/health", "127.0.0.1")
        finally:
            await client.aclose()
            server.close()
        kind_of, reason = classify(failure.value)
        assert kind_of == "tls" and "CERTIFICATE_VERIFY_FAILED" in reason

    on_both_loops(test) if kind == "http1" else asyncio.run(test())


def test_the_wrong_scheme_either_way_is_reported_as_such() -> None:
    async def test() -> None:
        server_tls, trusting, _ = contexts()
        tls_server, tls_port = await serve(server_tls, [])
        plain_server, plain_port = await serve(None, [])
        client = Http1Transport(ssl_context=trusting)
        try:
            with pytest.raises(httpx.HTTPError) as plain_to_tls:
                await get(client, f"http://127.0.0.1:{tls_port}/health")
            with pytest.raises(httpx.HTTPError) as tls_to_plain:
                await get(client, f"https://{NAME}:{plain_port}/health", "127.0.0.1")
        finally:
            await client.aclose()
            tls_server.close()
            plain_server.close()
        assert classify(plain_to_tls.value) == (
            "protocol",
            f"127.0.0.1:{tls_port} closed the connection without answering (is it an https server?).",
        )
        kind, reason = classify(tls_to_plain.value)
        assert kind == "tls" and "a plain http server behind an https:// URL?" in reason, reason

    on_both_loops(test)


def test_the_system_cas_are_the_default(tmp_path: object) -> None:
    """Without a CA bundle, the system's CAs: a self-signed test CA is not among them."""
    context = tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname

    async def test() -> None:
        server_tls, _, _ = contexts()
        server, port = await serve(server_tls, [])
        client = Http1Transport()
        try:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await get(client, f"https://{NAME}:{port}/health", "127.0.0.1")
        finally:
            await client.aclose()
            server.close()

    asyncio.run(test())
