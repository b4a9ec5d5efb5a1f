"""The in-process backend, every limit kind, on a fake clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from service.errors import EngineUnavailableError, RateLimitError
from service.limits import UNLIMITED, Limits, MemoryLimiter, QuotaExceeded, RateLimited, Scope, ScopeUsage

from .conftest import FakeClock


def scope(kind: str = "department", name: str = "acme/it", **limits: int) -> Scope:
    return Scope(kind, name, "acme", Limits(**limits))  # type: ignore[arg-type]


@pytest.fixture
def limiter(clock: FakeClock) -> MemoryLimiter:
    return MemoryLimiter(clock)


async def test_no_scopes_is_unlimited_and_free(limiter: MemoryLimiter) -> None:
    ticket = await limiter.admit((), 10**9)
    assert ticket is UNLIMITED and ticket.headers() == {}
    await ticket.settle(5)


async def test_requests_per_minute(limiter: MemoryLimiter, clock: FakeClock) -> None:
    s = (scope(requests_per_minute=3),)
    tickets = [await limiter.admit(s, 0) for _ in range(3)]
    assert [t.headers()["x-ratelimit-remaining-requests"] for t in tickets] == ["2", "1", "0"]
    assert tickets[2].headers()["x-ratelimit-reset-requests"] == "1m0s"  # empty: 60 s until full again
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(s, 0)
    error = caught.value
    assert isinstance(error, RateLimitError) and error.status_code == 429
    assert error.envelope()["error"]["type"] == "rate_limit_error"
    assert error.envelope()["error"]["code"] == "rate_limit_exceeded"
    assert "requests per minute (RPM) of department it: limit 3" in error.message
    assert error.headers["retry-after"] == "20" and error.headers["retry-after-ms"] == "20000"
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-should-retry" not in error.headers
    clock.advance(19.9)
    with pytest.raises(RateLimited):
        await limiter.admit(s, 0)
    clock.advance(0.1)  # 20 s: one request back
    await limiter.admit(s, 0)
    clock.advance(60)  # full again, and no more than full
    assert [t.headers()["x-ratelimit-remaining-requests"] for t in [await limiter.admit(s, 0)]] == ["2"]


async def test_tokens_per_minute_reserve_then_settle(limiter: MemoryLimiter, clock: FakeClock) -> None:
    s = (scope(tokens_per_minute=1000),)
    first = await limiter.admit(s, 600)  # prompt estimate + max_tokens
    assert first.headers()["x-ratelimit-remaining-tokens"] == "400"
    assert first.headers()["x-ratelimit-reset-tokens"] == "36s"
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(s, 500)
    assert "tokens per minute (TPM)" in caught.value.message and "requested 500" in caught.value.message
    assert caught.value.headers["retry-after-ms"] == "6000"  # 100 tokens short at 1000/60 per second
    await first.settle(150)  # the answer used 150: 450 come back
    await first.settle(0)  # idempotent: nothing more comes back
    second = await limiter.admit(s, 500)
    assert second.headers()["x-ratelimit-remaining-tokens"] == "350"
    await second.settle(900)  # more than reserved (a low prompt estimate): the excess is taken
    assert (await limiter.usage(s[0])).tokens_remaining == 0  # 350 - 400, below zero, shown as 0
    clock.advance(60)
    assert (await limiter.usage(s[0])).tokens_remaining == 950  # a minute refills 1000 from -50
    clock.advance(60)
    assert (await limiter.usage(s[0])).tokens_remaining == 1000  # and never above the limit


async def test_a_refund_never_fills_a_bucket_beyond_its_limit(
    limiter: MemoryLimiter, clock: FakeClock
) -> None:
    s = (scope(tokens_per_minute=100),)
    ticket = await limiter.admit(s, 100)
    clock.advance(120)
    await ticket.settle(0)
    assert (await limiter.usage(s[0])).tokens_remaining == 100


async def test_a_request_larger_than_the_tpm_limit_is_told_not_to_retry(limiter: MemoryLimiter) -> None:
    with pytest.raises(RateLimited) as caught:
        await limiter.admit((scope(tokens_per_minute=1000),), 1001)
    assert "Request too large" in caught.value.message and "Lower max_tokens" in caught.value.message
    assert caught.value.headers["x-should-retry"] == "false"


async def test_settle_without_a_count_keeps_the_reservation(limiter: MemoryLimiter) -> None:
    s = (scope(tokens_per_minute=1000, tokens_per_day=10_000),)
    await (await limiter.admit(s, 300)).settle(None)
    usage = await limiter.usage(s[0])
    assert (usage.tokens_remaining, usage.tokens_today) == (700, 300)


async def test_concurrent_requests(limiter: MemoryLimiter) -> None:
    s = (scope(concurrent_requests=2),)
    a, b = await limiter.admit(s, 1), await limiter.admit(s, 1)
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(s, 1)
    assert "Too many concurrent requests for department it: limit 2" in caught.value.message
    assert caught.value.headers["retry-after"] == "1"
    assert (await limiter.usage(s[0])).concurrent == 2
    await a.settle(1)
    await a.settle(1)  # a second settle frees nothing more
    c = await limiter.admit(s, 1)
    with pytest.raises(RateLimited):
        await limiter.admit(s, 1)
    await b.settle(None)
    await c.settle(0)
    assert (await limiter.usage(s[0])).concurrent == 0


async def test_day_budget_renews_at_utc_midnight(limiter: MemoryLimiter, clock: FakeClock) -> None:
    s = (scope(tokens_per_day=1000),)
    ticket = await limiter.admit(s, 800)
    await ticket.settle(700)
    await limiter.admit(s, 300)  # 700 + 300 = 1000: fits exactly
    with pytest.raises(QuotaExceeded) as caught:
        await limiter.admit(s, 1)
    error = caught.value
    assert error.status_code == 429 and error.envelope()["error"]["type"] == "insufficient_quota"
    assert error.envelope()["error"]["code"] == "insufficient_quota"
    assert "1000 tokens per UTC day, 0 left" in error.message
    assert error.headers["retry-after"] == str(12 * 3600)  # the clock says 12:00 UTC
    assert error.headers["x-should-retry"] == "false"
    assert (await limiter.usage(s[0])).tokens_today == 1000
    clock.advance(12 * 3600 - 1)
    with pytest.raises(QuotaExceeded):
        await limiter.admit(s, 1)
    clock.advance(1)  # 00:00 UTC
    assert (await limiter.usage(s[0])).tokens_today == 0
    await limiter.admit(s, 1000)


async def test_a_ticket_from_yesterday_settles_against_yesterday(
    limiter: MemoryLimiter, clock: FakeClock
) -> None:
    s = (scope(tokens_per_day=1000),)
    old = await limiter.admit(s, 900)
    clock.advance(12 * 3600)
    new = await limiter.admit(s, 900)
    await old.settle(0)  # gives back yesterday's reservation, not today's
    with pytest.raises(QuotaExceeded):
        await limiter.admit(s, 200)
    await new.settle(100)
    await limiter.admit(s, 900)


async def test_month_budget_renews_on_the_first(limiter: MemoryLimiter) -> None:
    clock = FakeClock(datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    limiter = MemoryLimiter(clock)
    s = (scope(tokens_per_month=5000, tokens_per_day=10_000),)
    await limiter.admit(s, 5000)
    with pytest.raises(QuotaExceeded) as caught:
        await limiter.admit(s, 10)
    assert "5000 tokens per UTC month, 0 left" in caught.value.message
    assert caught.value.headers["retry-after"] == "3600"
    clock.advance(3600)  # 2027-01-01 00:00 UTC: a new month (and a new day)
    await limiter.admit(s, 5000)
    assert await limiter.usage(s[0]) == ScopeUsage(None, None, None, 5000, 5000)


async def test_a_budget_refusal_names_what_is_left(limiter: MemoryLimiter) -> None:
    s = (scope(tokens_per_month=5000),)
    await limiter.admit(s, 4000)
    with pytest.raises(QuotaExceeded) as caught:
        await limiter.admit(s, 2000)
    assert "1000 left" in caught.value.message and "may use 2000" in caught.value.message
    await limiter.admit(s, 1000)  # a lower max_tokens fits


async def test_every_scope_applies_and_a_refusal_takes_nothing(limiter: MemoryLimiter) -> None:
    """Two keys of one department: each key has room, the department does not."""
    department = scope(requests_per_minute=3, tokens_per_minute=10_000)
    key_a = (scope("key", "key_a", requests_per_minute=100), department)
    key_b = (scope("key", "key_b", requests_per_minute=2), department)
    await limiter.admit(key_a, 10)
    await limiter.admit(key_b, 10)
    await limiter.admit(key_b, 10)
    with pytest.raises(RateLimited) as caught:  # key_b's own limit AND the department's
        await limiter.admit(key_b, 10)
    assert caught.value.headers["x-ratelimit-limit-requests"] in ("2", "3")
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(key_a, 10)  # key_a has 99 left, the department none
    assert "department it" in caught.value.message
    assert (await limiter.usage(key_a[0])).requests_remaining == 99  # the refusal took nothing from the key
    assert (await limiter.usage(department)).tokens_remaining == 10_000 - 30


async def test_headers_report_the_tightest_scope(limiter: MemoryLimiter) -> None:
    key = scope("key", "key_a", requests_per_minute=100, tokens_per_minute=500)
    department = scope(requests_per_minute=10, tokens_per_minute=100_000)
    headers = (await limiter.admit((key, department), 200)).headers()
    assert headers == {
        "x-ratelimit-limit-requests": "10",  # the department: 9 left, against the key's 99
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-limit-tokens": "500",  # the key: 300 left, against the department's 99,800
        "x-ratelimit-remaining-tokens": "300",
        "x-ratelimit-reset-tokens": "24s",
    }


async def test_the_refusal_to_report_is_the_one_waiting_cannot_fix(limiter: MemoryLimiter) -> None:
    s = (scope(requests_per_minute=1, tokens_per_day=100),)
    await limiter.admit(s, 100)
    with pytest.raises(QuotaExceeded):  # over both the rpm and the day budget: the budget is reported
        await limiter.admit(s, 1)


async def test_changed_limits_apply_to_the_same_counters(limiter: MemoryLimiter) -> None:
    for _ in range(5):
        await limiter.admit((scope(requests_per_minute=10),), 0)
    lowered = (scope(requests_per_minute=2),)  # the tenants file now says 2: the 5 left become 2
    await limiter.admit(lowered, 0)
    await limiter.admit(lowered, 0)
    with pytest.raises(RateLimited):
        await limiter.admit(lowered, 0)


def test_the_errors_are_the_gateways() -> None:
    from service.limits import LimitsUnavailable

    error = LimitsUnavailable("away")
    assert isinstance(error, EngineUnavailableError) and error.status_code == 503
    assert error.envelope()["error"]["code"] == "limits_unavailable" and error.headers["retry-after"] == "1"


def test_admit_now_is_admit_without_the_coroutine(limiter: MemoryLimiter) -> None:
    s = (scope(requests_per_minute=1),)
    limiter.admit_now(s, 0)
    with pytest.raises(RateLimited):
        limiter.admit_now(s, 0)
    assert limiter.status().available and limiter.status().backend == "memory"


async def test_the_hot_path_costs_microseconds(limiter: MemoryLimiter) -> None:
    """A lenient guard (measured: ~7 us for three scopes and every kind of limit, headers included)."""
    from service.limits import request_scopes

    big = 10**12
    key, dept = Limits(requests_per_minute=big), Limits(tokens_per_minute=big, concurrent_requests=big)
    tenant = Limits(tokens_per_day=big, tokens_per_month=big)
    started = time.perf_counter()
    for _ in range(5000):
        ticket = await limiter.admit(request_scopes("acme", tenant, "it", dept, "key_1", key), 300)
        ticket.headers()
        await ticket.settle(100)
    assert (time.perf_counter() - started) / 5000 < 100e-6


def test_build_limiter_from_settings() -> None:
    from service.config import Settings
    from service.limits import build_limiter
    from service.limits.redis_backend import RedisLimiter

    assert isinstance(build_limiter(Settings()), MemoryLimiter)
    built = build_limiter(
        Settings(limits_backend="redis", redis_url="redis://127.0.0.1:1/0", limits_failure_mode="closed")
    )
    assert isinstance(built, RedisLimiter) and built.status().failure_mode == "closed"
