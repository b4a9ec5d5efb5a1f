"""What awaiting the ledger costs a request: ``python -m tests.ledger.bench_await [--postgres]``.

At concurrency 1 and 64, on uvloop (as uvicorn runs the gateway), tasks do nothing but
``await ledger.record(rec)`` in a loop: the time from ``record()`` to the end of the await is
what the ledger adds to an answer. At 64 this is a stress bound (the queue is never idle), not
the gateway's case, where the requests' own work spaces the records out.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import uvloop

from service.ledger import Ledger, UsageRecord, open_ledger
from tests.ledger.pg import PostgresServer, find_bin_dir


def record(n: int) -> UsageRecord:
    return UsageRecord(
        time=datetime.now(UTC), request_id=f"req-{n}", tenant="acme", department="legal", key_id="k1",
        route="chat", model="m", adapter="acme-legal@2", template="legal@1", engine="local",
        prompt_tokens=20, completion_tokens=30, latency_ms=12.5, status=200,
    )  # fmt: skip


IO_WAIT = 0.0  # seconds each request waits for its upstream (--io-ms)


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def measure(ledger: Ledger | None, concurrency: int, total: int, work: float = 0.0) -> dict[str, float]:
    """``work``: seconds of CPU each request spends on the loop before its record (the gateway's own work)."""
    waits: list[float] = [0.0]
    counter = iter(range(total))

    async def worker() -> None:
        for n in counter:
            if work:
                busy(work)
                await asyncio.sleep(IO_WAIT)
            rec = record(n)
            if ledger is None:
                continue
            start = time.perf_counter()
            await ledger.record(rec)
            waits.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    waits.sort()
    return {
        "p50_us": statistics.median(waits) * 1e6,
        "p99_us": waits[int(len(waits) * 0.99)] * 1e6,
        "records_per_s": total / elapsed,
        "batches": ledger.stats.batches if ledger else 0,
    }


def run(name: str, url: str, batch_seconds: float, work: float) -> None:
    for concurrency, total in ((1, 3000), (64, 30000)):
        if work:
            total = min(total, int(2.0 / (work + IO_WAIT / concurrency)))  # about two seconds
            baseline = uvloop.run(measure(None, concurrency, total, work))["records_per_s"]
        ledger = open_ledger(url, batch_seconds=batch_seconds)
        try:
            uvloop.run(measure(ledger, concurrency, 200, work))  # warm-up
            before = ledger.stats.batches
            result = uvloop.run(measure(ledger, concurrency, total, work))
        finally:
            ledger.close()
        result["batches"] -= before
        relative = f"  {result['records_per_s'] / baseline:5.2f}x without" if work else ""
        print(
            f"{name:10} batch {batch_seconds * 1000:5.1f} ms  c={concurrency:<3}"
            f"  p50 {result['p50_us']:8.1f} us"
            f"  p99 {result['p99_us']:8.1f} us  {result['records_per_s']:8.0f} rec/s"
            f"  {total / max(result['batches'], 1):6.1f} rec/commit{relative}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--postgres", action="store_true", help="also a throwaway PostgreSQL server")
    parser.add_argument("--batch-ms", type=float, nargs="+", default=[10.0])
    parser.add_argument("--work-us", type=float, default=0.0, help="CPU per request besides the ledger")
    parser.add_argument("--io-ms", type=float, default=0.0, help="upstream wait per request (with --work-us)")
    parser.add_argument("--pg-options", default="", help="e.g. 'synchronous_commit=off'")
    args = parser.parse_args()
    work = args.work_us / 1e6
    global IO_WAIT
    IO_WAIT = args.io_ms / 1000
    with tempfile.TemporaryDirectory() as tmp:
        for batch_ms in args.batch_ms:
            run("sqlite", f"sqlite:///{Path(tmp) / f'bench-{batch_ms}.db'}", batch_ms / 1000, work)
    bin_dir = find_bin_dir()
    if args.postgres and bin_dir is not None:
        server = PostgresServer(bin_dir).start()
        try:
            for batch_ms in args.batch_ms:
                url = server.create_database(f"bench{int(batch_ms * 1000)}")
                if args.pg_options:
                    url += "?options=" + quote(" ".join(f"-c {o}" for o in args.pg_options.split()), safe="")
                run("postgresql", url, batch_ms / 1000, work)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
