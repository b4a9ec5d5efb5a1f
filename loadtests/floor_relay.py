"""The least a relay can do, for scale: what any gateway on this stack costs before its own work.

    .venv/bin/python -m loadtests.floor_relay PORT UPSTREAM_URL

A raw ASGI app on uvicorn that passes each request to ``UPSTREAM_URL`` + its path through the
gateway's own HTTP/1.1 transport (``service/engines/vllm/http1.py``) and streams the answer's bytes
back as they come: no authentication, no validation, no routing, no SSE parsing, no metrics.
The benchmark probes it beside the gateway, with the same stand-in upstream behind both.
"""

from __future__ import annotations

import sys
from typing import Any

import httpx
import uvicorn

from service.engines.vllm.http1 import Http1Transport

UPSTREAM = httpx.URL("http://127.0.0.1")  # set from the command line
TIMEOUTS = httpx.Timeout(30.0).as_dict()
transport = Http1Transport()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    url = UPSTREAM.copy_with(raw_path=scope["path"].encode())
    headers = [(b"content-type", b"application/json")]
    answer = await transport.request(scope["method"], url, body, headers, TIMEOUTS)
    content_type = next((v for k, v in answer.headers if k.lower() == b"content-type"), b"text/plain")
    await send(
        {
            "type": "http.response.start",
            "status": answer.status_code,
            "headers": [(b"content-type", content_type)],
        }
    )
    async for chunk in answer.stream:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    UPSTREAM = httpx.URL(sys.argv[2].rstrip("/"))
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
