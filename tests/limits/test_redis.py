"""The Redis backend against a real redis-server: the same behaviour as in memory, expiry, leases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from service.limits import Limits, MemoryLimiter, QuotaExceeded, RateLimited, Scope
from service.limits.base import Limiter
from service.limits.redis_backend import RedisLimiter

from .conftest import FakeClock


def scope(kind: str = "department", name: str = "acme/it", **limits: int) -> Scope:
    return Scope(kind, name, "acme", Limits(**limits))  # type: ignore[arg-type]


@pytest.fixture
async def redis_limiter(redis_url: str, clock: FakeClock) -> AsyncIterator[RedisLimiter]:
    limiter = RedisLimiter(redis_url, timeout=1.0, clock=clock)
    yield limiter
    await limiter.aclose()


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Limiter]:
    """Both backends, for what they must do alike (the per-minute refill is Redis's clock: no fake time)."""
    if request.param == "memory":
        yield MemoryLimiter(clock)
        return
    built = RedisLimiter(request.getfixturevalue("redis_url"), timeout=1.0, clock=clock)
    yield built
    await built.aclose()


async def test_requests_per_minute_alike(limiter: Limiter) -> None:
    s = (scope(requests_per_minute=3),)
    tickets = [await limiter.admit(s, 0) for _ in range(3)]
    assert [t.headers()["x-ratelimit-remaining-requests"] for t in tickets] == ["2", "1", "0"]
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(s, 0)
    assert 19 <= int(caught.value.headers["retry-after"]) <= 20
    assert caught.value.headers["x-ratelimit-limit-requests"] == "3"


async def test_tokens_reserve_and_settle_alike(limiter: Limiter) -> None:
    s = (scope(tokens_per_minute=1000, tokens_per_day=100_000, tokens_per_month=10**6),)
    first = await limiter.admit(s, 600)
    assert first.headers()["x-ratelimit-remaining-tokens"] == "400"
    with pytest.raises(RateLimited):
        await limiter.admit(s, 500)
    await first.settle(150)
    await first.settle(0)  # idempotent
    usage = await limiter.usage(s[0])
    assert 850 <= (usage.tokens_remaining or 0) <= 860
    assert (usage.tokens_today, usage.tokens_this_month) == (150, 150)
    second = await limiter.admit(s, 500)
    await second.settle(900)  # more than reserved: the excess is charged too
    usage = await limiter.usage(s[0])
    assert (usage.tokens_today, usage.tokens_this_month) == (1050, 1050)
    assert (usage.tokens_remaining or 0) < 10


async def test_too_large_alike(limiter: Limiter) -> None:
    with pytest.raises(RateLimited) as caught:
        await limiter.admit((scope(tokens_per_minute=100),), 101)
    assert "Request too large" in caught.value.message and caught.value.headers["x-should-retry"] == "false"


async def test_concurrency_alike(limiter: Limiter) -> None:
    s = (scope(concurrent_requests=2),)
    a, b = await limiter.admit(s, 1), await limiter.admit(s, 1)
    with pytest.raises(RateLimited, match="concurrent"):
        await limiter.admit(s, 1)
    await a.settle(1)
    await a.settle(1)
    c = await limiter.admit(s, 1)
    assert (await limiter.usage(s[0])).concurrent == 2
    await b.settle()
    await c.settle()
    assert (await limiter.usage(s[0])).concurrent == 0


async def test_budgets_and_periods_alike(limiter: Limiter, clock: FakeClock) -> None:
    s = (scope(tokens_per_day=1000, tokens_per_month=1500),)
    await (await limiter.admit(s, 900)).settle(800)
    with pytest.raises(QuotaExceeded, match="per UTC day, 200 left") as caught:
        await limiter.admit(s, 201)
    assert caught.value.headers["retry-after"] == str(12 * 3600)
    await limiter.admit(s, 200)
    clock.advance(12 * 3600)  # the next UTC day, the same month
    with pytest.raises(QuotaExceeded, match="per UTC month, 500 left"):
        await limiter.admit(s, 501)
    await limiter.admit(s, 500)
    assert (await limiter.usage(s[0])).tokens_today == 500


async def test_all_scopes_or_nothing_alike(limiter: Limiter) -> None:
    department = scope(requests_per_minute=2)
    key = scope("key", "key_a", requests_per_minute=100, tokens_per_day=10_000)
    await limiter.admit((key, department), 10)
    await limiter.admit((key, department), 10)
    with pytest.raises(RateLimited, match="department it"):
        await limiter.admit((key, department), 10)
    usage = await limiter.usage(key)
    assert usage.requests_remaining == 98 and usage.tokens_today == 20  # the refusal took nothing


async def test_headers_alike(limiter: Limiter) -> None:
    key = scope("key", "key_a", requests_per_minute=100, tokens_per_minute=500)
    department = scope(requests_per_minute=10, tokens_per_minute=100_000)
    headers = (await limiter.admit((key, department), 200)).headers()
    assert {k: v for k, v in headers.items() if "reset" not in k} == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-limit-tokens": "500",
        "x-ratelimit-remaining-tokens": "300",
    }
    assert headers["x-ratelimit-reset-requests"] in ("6s", "5.999s", "5.998s")
    assert headers["x-ratelimit-reset-tokens"] in ("24s", "23.999s", "23.998s")


async def test_counters_expire(redis_limiter: RedisLimiter, redis_url: str) -> None:
    s = (scope(requests_per_minute=60, tokens_per_minute=600, concurrent_requests=3, tokens_per_day=10**6),)
    await redis_limiter.admit(s, 60)
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = sorted(k.decode() if isinstance(k, bytes) else k for k in await client.keys("*"))
        assert all(k.startswith("loragate:limits:{acme}:d:acme/it:") for k in keys)  # one hash tag per tenant
        ttls = {
            k.rsplit(":", 2)[-1] if ":day:" in k else k.rsplit(":", 1)[-1]: await client.ttl(k) for k in keys
        }
        assert 0 < ttls["rpm"] <= 3 and 0 < ttls["tpm"] <= 8  # full again after 1 s / 6 s (+1 s)
        assert 0 < ttls["inflight"] <= 60  # the lease
        assert 86400 < ttls["20261205"] <= 2 * 86400  # the (fake) day's end, plus a day for the admin API
    finally:
        await client.aclose()


async def test_only_needed_round_trips(redis_limiter: RedisLimiter, redis_url: str) -> None:
    """Admission is one script call; a ticket with nothing to give back settles without any."""
    client = aioredis.Redis.from_url(redis_url)

    async def script_calls() -> dict[str, int]:
        stats = await client.info("commandstats")
        return {
            k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items() if "eval" in k or "script" in k
        }

    try:
        rpm_only, with_tokens = (scope(requests_per_minute=60),), (scope(tokens_per_minute=600),)
        await (await redis_limiter.admit(with_tokens, 10)).settle(10)  # connects, loads the scripts
        await client.config_resetstat()
        await (await redis_limiter.admit(rpm_only, 10)).settle(3)  # nothing to give back
        assert await script_calls() == {"evalsha": 1}
        await (await redis_limiter.admit(with_tokens, 10)).settle(3)
        assert await script_calls() == {"evalsha": 3}
        await (await redis_limiter.admit(with_tokens, 10)).settle(10)  # used all it reserved
        assert await script_calls() == {"evalsha": 4}
    finally:
        await client.aclose()


async def test_concurrent_admissions_are_atomic(redis_url: str) -> None:
    """400 admissions at once on 400 connections: exactly the concurrency limit and the budget hold."""
    limiter = RedisLimiter(redis_url, timeout=5.0)
    try:
        s = (scope(concurrent_requests=7),)
        results = await asyncio.gather(*(limiter.admit(s, 1) for _ in range(200)), return_exceptions=True)
        assert sum(not isinstance(r, BaseException) for r in results) == 7
        assert all(isinstance(r, RateLimited) for r in results if isinstance(r, BaseException))
        budget = (scope("key", "key_b", tokens_per_day=1000),)
        results = await asyncio.gather(
            *(limiter.admit(budget, 10) for _ in range(200)), return_exceptions=True
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 100
    finally:
        await limiter.aclose()


async def test_leases_are_renewed_while_a_request_runs(redis_url: str) -> None:
    limiter = RedisLimiter(redis_url, timeout=1.0, lease=0.3)
    try:
        s = (scope(concurrent_requests=1),)
        ticket = await limiter.admit(s, 1)
        await asyncio.sleep(1.0)  # three leases long: renewed every 0.1 s
        with pytest.raises(RateLimited):
            await limiter.admit(s, 1)
        await ticket.settle(1)
        await (await limiter.admit(s, 1)).settle(1)
    finally:
        await limiter.aclose()


async def test_settle_survives_a_cancelled_caller(redis_limiter: RedisLimiter) -> None:
    s = (scope(concurrent_requests=1),)
    ticket = await redis_limiter.admit(s, 1)
    settling = asyncio.create_task(ticket.settle(0))
    await asyncio.sleep(0)
    settling.cancel()  # the shielded call still ends
    await asyncio.gather(settling, return_exceptions=True)
    await asyncio.sleep(0.05)
    assert (await redis_limiter.usage(s[0])).concurrent == 0
