"""The least a relay can do, for scale: what any gateway on this stack costs before its own work.

    .venv/bin/python -m loadtests.floor_relay PORT UPSTREAM_URL

A raw ASGI app on uvicorn that passes each request to ``UPSTREAM_URL`` + its path through one
aiohttp session and streams the answer's bytes back as they come: no authentication, no
validation, no routing, no SSE parsing, no metrics. The benchmark probes it beside the gateway,
with the same stand-in upstream behind both.
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import uvicorn

UPSTREAM = ""  # set from the command line
session: aiohttp.ClientSession | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global session
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if session is None:
        session = aiohttp.ClientSession()
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    headers = {"content-type": "application/json"}
    async with session.request(
        scope["method"], UPSTREAM + scope["path"], data=body, headers=headers
    ) as upstream:
        head = [(b"content-type", upstream.headers.get("content-type", "text/plain").encode())]
        await send({"type": "http.response.start", "status": upstream.status, "headers": head})
        async for chunk in upstream.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    UPSTREAM = sys.argv[2].rstrip("/")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
