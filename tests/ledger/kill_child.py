"""A stand-in for a gateway under load, for the kill -9 test: ``python tests/ledger/kill_child.py URL``.

32 concurrent "requests" loop forever: each records its usage, awaits the ledger's future, and
only then prints its request id (as the gateway sends an answer's last bytes only then). The
test kills this process with SIGKILL and checks that every printed id is in the database.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from datetime import UTC, datetime

sys.path.insert(0, os.getcwd())

from service.ledger import UsageRecord, open_ledger  # noqa: E402


async def main(url: str) -> None:
    ledger = open_ledger(url, batch_seconds=0.002)
    ids = itertools.count()
    out = sys.stdout

    async def request() -> None:
        while True:
            request_id = f"req-{next(ids)}"
            record = UsageRecord(
                time=datetime.now(UTC), request_id=request_id, tenant="acme", department="legal",
                key_id="k1", route="chat", model="m", prompt_tokens=3, completion_tokens=5, latency_ms=1.0,
            )  # fmt: skip
            await ledger.record(record)
            out.write(request_id + "\n")
            out.flush()

    await asyncio.gather(*(request() for _ in range(32)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
