"""uvicorn's HTTP/1.1 protocol (httptools); what a response writes in one event loop pass, in one write.

uvicorn writes a response's head the moment the app sends ``http.response.start``, and each
body part as it comes. Each write is a syscall and wakes the client; on a host with few
cores, the woken client is often run on the gateway's own core and holds it until it has
read what came and waits again (about a millisecond per wake-up on the 2-core VM after an
idle gap, where the gateway needs a fraction of that for the rest of the answer;
BENCHMARKS.md). So writes wait for the end of the loop's current pass, as uvloop does
itself when a socket is busy and as Node's ``http`` does with a response's head: the head
leaves with the first body bytes, and the events of a one-token answer in one write.
Nothing waits for more than the pass that produced it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class PassWriteTransport:
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
    """``uvicorn.run(app, http=GatewayHttpProtocol)``: httptools, writes sent once per loop pass."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._writes = PassWriteTransport(transport, asyncio.get_running_loop())
        super().connection_made(self._writes)  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self._writes.flush()  # a complete answer leaves now, not after the app's bookkeeping
        super().on_response_complete()
