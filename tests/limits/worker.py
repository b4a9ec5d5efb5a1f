"""A gateway-like process for the cluster tests: its own RedisLimiter, driven line by line on stdin.

``python -m tests.limits.worker REDIS_URL`` prints ``ready``; then for each JSON line
``{"limits": {...}, "n": 100, "estimate": 10, "at": EPOCH}`` it admits n requests at once, from time ``at``,
on department ``acme/it``, holds the tickets and prints ``{"admitted": k, "refused": m}``; ``settle``
settles them (prints ``settled``); ``crash`` kills the process with SIGKILL while it holds them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

from service.limits import Limits, RateLimited, Scope, Ticket
from service.limits.redis_backend import RedisLimiter


async def main(url: str) -> None:
    limiter = RedisLimiter(url, timeout=5.0, lease=float(os.environ.get("LEASE", "60")))
    held: list[Ticket] = []
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        if line == "settle":
            await asyncio.gather(*(t.settle(0) for t in held))
            held.clear()
            print("settled", flush=True)
        elif line == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        else:
            phase = json.loads(line)
            scopes = (Scope("department", "acme/it", "acme", Limits(**phase["limits"])),)

            async def one(
                scopes: tuple[Scope, ...] = scopes, estimate: int = phase["estimate"]
            ) -> Ticket | None:
                try:
                    return await limiter.admit(scopes, estimate)
                except RateLimited:
                    return None
                # anything else (QuotaExceeded included) is counted below as refused too

            await asyncio.sleep(phase["at"] - time.time())  # both processes start at the same moment
            results = await asyncio.gather(*(one() for _ in range(phase["n"])), return_exceptions=True)
            admitted = [r for r in results if r is not None and not isinstance(r, BaseException)]
            held += admitted
            print(
                json.dumps({"admitted": len(admitted), "refused": len(results) - len(admitted)}), flush=True
            )
    await limiter.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
