"""Redis goes away and comes back: limits_failure_mode open admits, closed refuses with 503; it recovers."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator

import pytest

from service.limits import UNLIMITED, Limits, LimitsUnavailable, RateLimited, Scope
from service.limits.redis_backend import FailureMode, RedisLimiter

from .redis_server import RedisServer

SCOPES = (Scope("department", "acme/it", "acme", Limits(requests_per_minute=2, concurrent_requests=5)),)
RETRY = 0.2  # seconds between probes while Redis is away


async def exhaust(limiter: RedisLimiter) -> None:
    await limiter.admit(SCOPES, 1)
    await limiter.admit(SCOPES, 1)
    with pytest.raises(RateLimited):
        await limiter.admit(SCOPES, 1)


async def recovers(limiter: RedisLimiter) -> None:
    """Requests go on (per mode) until one probe finds Redis again; from then on the limit holds again:
    the fresh Redis admits 2 (the probe included) and refuses the third.
    """
    deadline = time.monotonic() + 5
    while not limiter.status().available:
        assert time.monotonic() < deadline, "the limiter never found Redis again"
        try:
            await limiter.admit(SCOPES, 1)
        except LimitsUnavailable:
            pass
        await asyncio.sleep(0.05)
    await limiter.admit(SCOPES, 1)  # the probe was the first
    with pytest.raises(RateLimited):
        await limiter.admit(SCOPES, 1)


async def test_open_admits_while_redis_is_away_and_recovers(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RedisLimiter(own_redis.url, failure_mode="open", retry_interval=RETRY)
    try:
        await exhaust(limiter)
        held = await limiter.admit((Scope("key", "key_x", "acme", Limits(concurrent_requests=1)),), 1)
        own_redis.stop()
        caplog.clear()
        started = time.monotonic()
        tickets = [await limiter.admit(SCOPES, 1) for _ in range(50)]  # over the limit: admitted all the same
        assert time.monotonic() - started < 0.5  # a dead Redis does not slow requests down
        assert all(t is UNLIMITED and t.headers() == {} for t in tickets)
        await held.settle(1)  # settling while Redis is away: no error, no wait
        status = limiter.status()
        assert (status.available, status.outages, status.admitted_unlimited) == (False, 1, 50)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "admitting requests without limits" in warnings[0].getMessage()

        own_redis.start()  # a new, empty Redis on the same port
        await recovers(limiter)
        assert "is back" in caplog.records[-1].getMessage()
        assert limiter.status().outages == 1
    finally:
        await limiter.aclose()


async def test_closed_refuses_with_503_while_redis_is_away_and_recovers(own_redis: RedisServer) -> None:
    limiter = RedisLimiter(own_redis.url, failure_mode="closed", retry_interval=RETRY)
    try:
        await exhaust(limiter)
        own_redis.stop()
        for _ in range(20):
            with pytest.raises(LimitsUnavailable) as caught:
                await limiter.admit(SCOPES, 1)
        error = caught.value
        assert error.status_code == 503 and error.envelope()["error"]["code"] == "limits_unavailable"
        assert error.headers["retry-after"] == "1"
        assert limiter.status().refused_unavailable == 20
        assert await limiter.admit((), 1) is UNLIMITED  # a request no scope limits needs no Redis
        own_redis.start()
        await recovers(limiter)
    finally:
        await limiter.aclose()


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung Redis, a dropped network)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_a_hung_redis_costs_one_short_timeout(black_hole: int, mode: FailureMode) -> None:
    url = f"redis://127.0.0.1:{black_hole}/0"
    limiter = RedisLimiter(url, failure_mode=mode, timeout=0.05, retry_interval=5)
    try:
        started = time.monotonic()
        for _ in range(20):  # the first one waits for the timeout; the others skip Redis until the next probe
            try:
                await limiter.admit(SCOPES, 1)
            except LimitsUnavailable:
                assert mode == "closed"
        assert time.monotonic() - started < 0.3
        assert not limiter.status().available
    finally:
        await limiter.aclose()
