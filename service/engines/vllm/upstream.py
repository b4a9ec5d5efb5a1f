"""The seam between the vLLM backend and its HTTP client: ``UpstreamClient``, one request method.

Every call the backend makes to a replica (streamed chat, adapter loads and unloads, /health,
/v1/models, /metrics) goes through ``UpstreamClient.request``, so a client that adds TLS or an
upstream key, or a test fake, is swapped in without the backend knowing which it has:

- ``http1.Http1Transport``, the default: the gateway's own HTTP/1.1 client (``http`` and
  ``https``), whose replies release their connection at an event stream's ``[DONE]`` (a quarter
  of httpcore's CPU per request; docs/benchmarks.md);
- ``HttpxUpstream``: any ``httpx.AsyncBaseTransport`` (httpx's own pool, with TLS and proxies,
  by default; ``httpx.MockTransport`` in the unit tests).

Both verify ``https`` replicas against one ``ssl.SSLContext`` (``tls_context``: the
``upstream_ca_bundle``, else the system's CAs). A replica found by discovery is an ``address``
beside the configured URL: the connection goes to the address, while the URL's host stays the
``host`` header and the name TLS verifies (a Kubernetes headless Service's pods share one
certificate name).

Failures are httpx's exception classes whichever client raises them (``httpx.ConnectError``,
``httpx.ReadTimeout``, ...): the backend retries on another replica, or maps them to its own
errors, by class.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol, cast

import httpx

Headers = Sequence[tuple[bytes, bytes]]
Timeouts = Mapping[str, float | None]  # httpx.Timeout.as_dict(): connect, read, write, pool
DRAIN_WAIT = 1.0  # seconds an httpx reply released at [DONE] may take to end before it is dropped


class UpstreamReply(Protocol):
    """An answer whose status and headers are in; its body is read as it arrives (``async for``).

    ``aclose`` before the end drops the connection (vLLM sees the client leave and aborts);
    ``release_at_end`` says the reader needs no more (an event stream's ``[DONE]``), so the
    connection may be kept once the body's last bytes are in.
    """

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Headers: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aread(self) -> bytes: ...

    def release_at_end(self) -> None: ...

    async def aclose(self) -> None: ...


class UpstreamClient(Protocol):
    async def request(
        self,
        method: str,
        url: httpx.URL,
        content: bytes,
        headers: Headers,
        timeouts: Timeouts,
        address: str | None = None,
    ) -> UpstreamReply:
        """Send ``content`` to ``url`` (to ``address``, if given, instead of ``url``'s host); return
        once the answer's head is in. ``host`` and ``content-length`` are the client's to add."""
        ...

    async def aclose(self) -> None: ...


def tls_context(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """The context every ``https`` replica is verified with: ``ca_bundle`` (PEM) or the system's CAs.

    Made once per engine: building one reads the CA files, which costs milliseconds.
    """
    return ssl.create_default_context(cafile=None if ca_bundle is None else str(ca_bundle))


class HttpxUpstream:
    """``UpstreamClient`` over an httpx transport: httpx's own pool by default (TLS, proxies)."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 1024,
        ssl_context: ssl.SSLContext | None = None,
    ):
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        verify: ssl.SSLContext | bool = ssl_context or True
        self._transport = transport or httpx.AsyncHTTPTransport(limits=limits, verify=verify)

    async def request(
        self,
        method: str,
        url: httpx.URL,
        content: bytes,
        headers: Headers,
        timeouts: Timeouts,
        address: str | None = None,
    ) -> HttpxReply:
        extensions: dict[str, object] = {"timeout": timeouts}
        if address is not None:  # dial the address; the URL's host stays the Host header and TLS's name
            headers = [(b"host", url.netloc), *headers]
            extensions["sni_hostname"] = url.host
            url = url.copy_with(host=address)
        request = httpx.Request(method, url, content=content, headers=headers, extensions=extensions)
        return HttpxReply(await self._transport.handle_async_request(request))

    async def aclose(self) -> None:
        await self._transport.aclose()


class HttpxReply:
    """An ``httpx.Response`` as an ``UpstreamReply``: its raw body, as the transport hands it over."""

    def __init__(self, response: httpx.Response):
        self._response = response
        self.status_code = response.status_code
        self.headers: Headers = response.headers.raw
        self._body = aiter(cast(httpx.AsyncByteStream, response.stream))  # once: a stream may restart
        self._drain = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._body

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self._body])

    def release_at_end(self) -> None:
        self._drain = True

    async def aclose(self) -> None:
        """Closes the response; one released at ``[DONE]`` is read to its end first (briefly), as
        httpx's pool keeps only a connection whose answer was read to the end."""
        try:
            if self._drain:
                self._drain = False
                async with asyncio.timeout(DRAIN_WAIT):
                    async for _ in self._body:
                        pass
        except (TimeoutError, httpx.HTTPError):
            pass  # then the connection closes
        finally:
            await self._response.aclose()
