"""The vLLM hop's HTTP client beside httpx's own, on the same stand-in, in the same run.

Part of ``make bench``: ``bench_instant`` runs it while ``instant_upstream`` is up. This process
sends one-token streamed chat requests one after another and reads each answer to its end, on
uvloop as the gateway does, and reports its own CPU time and wall time per request for:

- ``httpcore``: httpx's own transport, what an ``httpx.AsyncClient`` uses by default;
- ``http1 via httpx``: ``service/engines/vllm/http1.py`` behind httpx's Request and Response (the
  backend's health checks and adapter loads go this way);
- ``http1 exchange``: the same transport's ``request``, without httpx's objects (the backend's chat
  requests).

The variants take turns, ``repeats`` times; each figure is the median of its turns.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
import uvloop

from service.engines.vllm.http1 import Http1Transport

BODY = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "stream": True}
).encode()
TIMEOUTS = httpx.Timeout(30.0).as_dict()
Send = Callable[[], Awaitable[bytes]]


def bench_client(upstream: str, requests: int = 1000, repeats: int = 3) -> dict[str, dict[str, float]]:
    """``{variant: {"cpu_ms": ..., "wall_ms": ...}}`` per request, printed as a table."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        figures = runner.run(_measure(httpx.URL(f"{upstream}/v1/chat/completions"), requests, repeats))
    print("the vLLM hop's client, one-token streams one at a time (this process's CPU per request):")
    for name, result in figures.items():
        print(f"  {name:<18} {result['cpu_ms']:6.3f} ms CPU   {result['wall_ms']:6.3f} ms wall")
    return figures


async def _measure(url: httpx.URL, requests: int, repeats: int) -> dict[str, dict[str, float]]:
    httpcore, http1 = httpx.AsyncHTTPTransport(), Http1Transport()
    variants = {
        "httpcore": _via_httpx(httpcore, url),
        "http1 via httpx": _via_httpx(http1, url),
        "http1 exchange": _exchange(http1, url),
    }
    turns: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    try:
        for name, send in variants.items():
            if b"[DONE]" not in await send():
                raise RuntimeError(f"{name}: the stand-in's answer did not end in [DONE]")
            for _ in range(200):  # warm-up: connections open, code paths hot
                await send()
        for _ in range(repeats):
            for name, send in variants.items():
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(requests):
                    await send()
                turns[name].append((time.process_time() - cpu, time.perf_counter() - wall))
    finally:
        await httpcore.aclose()
        await http1.aclose()
    return {
        name: {
            "cpu_ms": 1000 * statistics.median(cpu for cpu, _ in results) / requests,
            "wall_ms": 1000 * statistics.median(wall for _, wall in results) / requests,
        }
        for name, results in turns.items()
    }


def _via_httpx(transport: httpx.AsyncBaseTransport, url: httpx.URL) -> Send:
    headers = {"content-type": "application/json"}

    async def send() -> bytes:
        request = httpx.Request("POST", url, content=BODY, headers=headers, extensions={"timeout": TIMEOUTS})
        response = await transport.handle_async_request(request)
        try:
            return await response.aread()
        finally:
            await response.aclose()

    return send


def _exchange(transport: Http1Transport, url: httpx.URL) -> Send:
    headers = [(b"content-type", b"application/json")]

    async def send() -> bytes:
        answer = await transport.request("POST", url, BODY, headers, TIMEOUTS)
        return await answer.aread()

    return send
