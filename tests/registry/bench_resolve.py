"""What an alias look-up costs in each registry: ``.venv/bin/python -m tests.registry.bench_resolve``.

Starts moto's S3 server on a free port, publishes a tiny adapter, and times ``Registry.resolve``:
a folder registry, an s3:// one within its TTL, one that asks S3 on every call (TTL 0: a 304),
and 3 s of back-to-back look-ups with the default TTL. Figures are in docs/registry.md.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from service.registry import Registry
from service.registry_store_s3 import ALIAS_TTL, S3Store
from testkit.tiny_llama import write_tiny_llama

from ..conftest import SMOLLM2_DIR, TINY_MODEL
from ..demo_adapters import make_adapter
from .s3_server import CREDENTIALS, MotoServer


def timed(registry: Registry, n: int) -> str:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        registry.resolve("it")
        times.append(time.perf_counter() - started)
    return (
        f"p50 {statistics.median(times) * 1e6:.1f} us, mean {statistics.mean(times) * 1e6:.1f} us ({n} calls)"
    )


def main() -> None:
    import boto3  # type: ignore[import-untyped]

    os.environ.update(CREDENTIALS)
    tmp = Path(tempfile.mkdtemp(prefix="loragate-bench-registry-"))
    model = write_tiny_llama(tmp / "model", SMOLLM2_DIR)
    adapter = make_adapter(model, tmp / "adapter")
    server = MotoServer(tmp / "moto.log").start()
    try:
        boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="bench")

        def s3(cache: str, ttl: float) -> Registry:
            store = S3Store("s3://bench/r", tmp / cache, endpoint_url=server.endpoint, alias_ttl=ttl)
            return Registry(store, TINY_MODEL, base_aliases=(str(model),))

        factory = s3("factory", ALIAS_TTL)
        factory.publish(adapter, name="x", level="L2")
        factory.promote("it", "x@1")
        print(f"weights: {(adapter / 'adapter_model.safetensors').stat().st_size} bytes")
        gateway = s3("gateway", ALIAS_TTL)
        started = time.perf_counter()
        gateway.resolve("it")
        print(
            f"s3, first resolve (aliases, download, checks): {(time.perf_counter() - started) * 1e3:.0f} ms"
        )
        print(f"s3, within the {ALIAS_TTL} s TTL: {timed(gateway, 20000)}")
        strict = s3("gateway", 0.0)
        strict.resolve("it")
        print(f"s3, TTL 0 (a conditional GET, 304): {timed(strict, 300)}")
        folder = Registry(tmp / "folder", TINY_MODEL, base_aliases=(str(model),))
        folder.publish(adapter, name="x", level="L2")
        folder.promote("it", "x@1")
        print(f"folder: {timed(folder, 20000)}")

        async def inline() -> float:
            started = time.perf_counter()
            for _ in range(20000):
                await gateway.resolve_async("it")
            return (time.perf_counter() - started) / 20000

        print(f"s3, resolve_async within the TTL: mean {asyncio.run(inline()) * 1e6:.1f} us")
        gets: list[int] = []
        real = gateway.store.client.get_object  # type: ignore[attr-defined]
        gateway.store.client.get_object = lambda **k: (gets.append(1), real(**k))[1]  # type: ignore[attr-defined]
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < 3:
            gateway.resolve("it")
            calls += 1
        mean = (time.perf_counter() - started) / calls * 1e6
        print(
            f"s3, 3 s back to back, default TTL: {calls} resolves, {len(gets)} GETs to S3, mean {mean:.1f} us"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
