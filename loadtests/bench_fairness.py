"""One fast stream must not hold up the gateway's other requests.

Part of ``make bench``: ``bench_instant`` runs it while the gateway is in front of
``instant_upstream``, which sends a request's tokens as fast as the socket takes them.
One-token requests go through the gateway one at a time, first alone, then while another
process streams 8000-token answers back to back and reads them as fast as it can. When the
upstream is ahead of the gateway, the relay could go from event to event without ever
letting the event loop run, and the other requests would wait for the stream. The latest
figures: docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.synchronize
import statistics

import httpx
from tqdm import tqdm

from loadtests.common import DEPARTMENTS, PROMPTS, Target, one

LONG_TOKENS = 8000  # the stand-in's context is 8192


def fairness(via: Target, requests: int = 60) -> dict[str, float]:
    """p50/p90 of one-token requests through the gateway, alone and beside a fast stream (ms)."""
    alone = asyncio.run(_latencies(via, requests, "alone"))
    context = multiprocessing.get_context("fork")  # no re-import of __main__
    streaming = context.Event()
    reader = context.Process(target=_read_fast, args=(via, streaming), daemon=True)
    reader.start()
    try:
        if not streaming.wait(60):
            raise RuntimeError("the fast reader got no stream from the gateway")
        beside = asyncio.run(_latencies(via, requests, "beside a fast stream"))
    finally:
        reader.terminate()
        reader.join()
    figures: dict[str, float] = {}
    print("one-token requests through the gateway while another client streams as fast as it can:")
    for name, latencies in (("alone", alone), ("beside_fast_stream", beside)):
        ordered = sorted(latencies)
        p50, p90 = statistics.median(ordered), ordered[int(0.9 * len(ordered))]
        figures |= {f"{name}_p50_ms": round(p50, 2), f"{name}_p90_ms": round(p90, 2)}
        print(f"  {name.replace('_', ' '):<20} p50 {p50:7.2f} ms   p90 {p90:7.2f} ms")
    return figures


async def _latencies(via: Target, requests: int, label: str) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(timeout=60) as client:
        for i in tqdm(range(requests), desc=f"fairness, {label}", unit="req"):
            department, prompt = DEPARTMENTS[i % 3], PROMPTS[i % len(PROMPTS)]
            latencies.append((await one(client, via, department, prompt, 1))[0] * 1000)
    return latencies


def _read_fast(via: Target, streaming: multiprocessing.synchronize.Event) -> None:
    """Long answers back to back, read and dropped as fast as they come (until terminated)."""
    body = {
        "model": via.models["plain"],
        "messages": [{"role": "user", "content": "Tell me everything."}],
        "max_tokens": LONG_TOKENS,
        "stream": True,
    }
    headers = via.headers | ({"X-Department": "plain"} if via.department_header else {})
    with httpx.Client(timeout=60, headers=headers) as client:
        while True:
            with client.stream("POST", via.url, json=body) as response:
                response.raise_for_status()
                for _ in response.iter_raw():
                    streaming.set()
