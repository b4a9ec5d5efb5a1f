"""Several gateways, one Redis: two separate processes share one limit; a crashed one's slots come back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.limits import Limits, RateLimited, Scope
from service.limits.redis_backend import RedisLimiter

ROOT = Path(__file__).resolve().parents[2]


class Worker:
    """A gateway-like process (``tests/limits/worker.py``) with its own RedisLimiter."""

    def __init__(self, url: str, lease: float = 60.0):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.limits.worker", url],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "LEASE": str(lease)},
        )

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def read(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line, f"the worker ended (exit status {self.process.poll()})"
        return line

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def workers(redis_url: str) -> Iterator[tuple[Worker, Worker]]:
    pair = (Worker(redis_url), Worker(redis_url))
    try:
        for worker in pair:
            assert worker.read() == "ready"
        yield pair
    finally:
        for worker in pair:
            worker.close()


def together(workers: tuple[Worker, Worker], phase: dict[str, object]) -> list[int]:
    """Both processes admit ``n`` requests at once; how many each admitted."""
    at = time.time() + 0.2
    for worker in workers:
        worker.send(json.dumps({**phase, "at": at}))
    return [json.loads(worker.read())["admitted"] for worker in workers]


def settle(workers: tuple[Worker, Worker]) -> None:
    for worker in workers:
        worker.send("settle")
    assert [worker.read() for worker in workers] == ["settled", "settled"]


def test_two_processes_share_one_limit(workers: tuple[Worker, Worker]) -> None:
    started = time.monotonic()
    admitted = together(workers, {"limits": {"requests_per_minute": 120}, "n": 150, "estimate": 1})
    refill = 120 / 60 * (time.monotonic() - started)  # the bucket refills 2 per second meanwhile
    assert 120 <= sum(admitted) <= 120 + refill + 1, admitted
    settle(workers)

    admitted = together(workers, {"limits": {"concurrent_requests": 10}, "n": 50, "estimate": 1})
    assert sum(admitted) == 10, admitted  # held by the two processes together
    settle(workers)  # the slots are freed, across processes too
    assert sum(together(workers, {"limits": {"concurrent_requests": 10}, "n": 50, "estimate": 1})) == 10
    settle(workers)

    admitted = together(workers, {"limits": {"tokens_per_day": 1000}, "n": 100, "estimate": 10})
    assert sum(admitted) == 100, admitted
    settle(workers)  # settle(0): all 1000 reserved tokens come back

    # one after the other: what the first takes, the second finds gone
    first, second = workers
    budget = {"limits": {"tokens_per_day": 1000}, "n": 60, "estimate": 10, "at": 0}
    first.send(json.dumps(budget))
    assert json.loads(first.read())["admitted"] == 60
    second.send(json.dumps(budget))
    assert json.loads(second.read())["admitted"] == 40


async def test_a_crashed_gateways_slots_come_back_after_its_lease(redis_url: str) -> None:
    crashed = Worker(redis_url, lease=0.5)
    try:
        assert crashed.read() == "ready"
        crashed.send(json.dumps({"limits": {"concurrent_requests": 3}, "n": 3, "estimate": 1, "at": 0}))
        assert json.loads(crashed.read())["admitted"] == 3
        crashed.send("crash")  # SIGKILL: nothing settled
        crashed.process.wait(10)
    finally:
        crashed.close()
    limiter = RedisLimiter(redis_url, timeout=1.0)
    scopes = (Scope("department", "acme/it", "acme", Limits(concurrent_requests=3)),)
    try:
        with pytest.raises(RateLimited):
            await limiter.admit(scopes, 1)
        deadline = time.monotonic() + 3
        while True:
            try:
                await limiter.admit(scopes, 1)
                break
            except RateLimited:
                assert time.monotonic() < deadline, "the crashed gateway's slots never came back"
                time.sleep(0.05)
        assert (await limiter.usage(scopes[0])).concurrent == 1
    finally:
        await limiter.aclose()
