"""What every limits backend shares: the ticket, the refusal, the clock and the budget periods.

The gateway's calls, the same for every backend::

    ticket = await limiter.admit(scopes, estimated_tokens)   # RateLimited, QuotaExceeded, LimitsUnavailable
    try:
        ...                                                   # answer; put ticket.headers() on it
    finally:
        await ticket.settle(actual_tokens)                    # idempotent; gives back the unused reservation
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from .errors import QuotaExceeded, RateLimited
from .headers import Window, duration, rate_headers, retry_headers
from .policy import Scope

Reason = Literal["requests", "tokens", "too_large", "concurrent", "day", "month"]
CONCURRENCY_RETRY = 1.0  # seconds: when a concurrency slot frees up is unknown


class Ticket(Protocol):
    """One admitted request: its reservation, its concurrency slots and what its headers say."""

    async def settle(self, actual_tokens: int | None = None) -> None:
        """Charge ``actual_tokens`` (prompt + completion) instead of the reservation, free the slots.

        None keeps the whole reservation charged. Idempotent; never raises (safe in ``finally``).
        """
        ...

    def headers(self) -> Mapping[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers as of admission; empty when no scope has a per-minute limit."""
        ...


@dataclass(frozen=True, slots=True)
class LimiterStatus:
    """For /metrics and /ready: whether the counters can be reached, and what the outages cost."""

    backend: str  # "memory" | "redis"
    available: bool  # False during an outage of the backend
    failure_mode: str  # "open" | "closed"
    outages: int  # outages begun since start
    admitted_unlimited: int  # requests admitted without limits during outages (mode open)
    refused_unavailable: int  # requests refused with 503 during outages (mode closed)


@dataclass(frozen=True, slots=True)
class ScopeUsage:
    """A scope's counters now (the admin API's view); None where the scope has no such limit."""

    requests_remaining: int | None
    tokens_remaining: int | None
    concurrent: int | None
    tokens_today: int | None
    tokens_this_month: int | None


class Limiter(Protocol):
    async def admit(self, scopes: Sequence[Scope], estimated_tokens: int) -> Ticket: ...

    async def usage(self, scope: Scope) -> ScopeUsage: ...

    def status(self) -> LimiterStatus: ...

    async def aclose(self) -> None: ...


class _Unlimited:
    """The ticket of a request no counter holds: no scope has limits, or the backend is away (mode open)."""

    __slots__ = ()

    async def settle(self, actual_tokens: int | None = None) -> None:
        return None

    def headers(self) -> Mapping[str, str]:
        return _NO_HEADERS


_NO_HEADERS: Mapping[str, str] = {}
UNLIMITED: Ticket = _Unlimited()


# -- clocks and budget periods ---------------------------------------------------------------------------
class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...  # wall clock, seconds since the epoch (UTC day and month)


class SystemClock:
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


@dataclass(frozen=True, slots=True)
class Period:
    """A UTC calendar day or month: its id (``20261205``, ``202612``) and its bounds (epoch seconds)."""

    id: str
    start: float
    end: float


def day_of(wall: float) -> Period:
    start = math.floor(wall / 86400) * 86400.0
    return Period(datetime.fromtimestamp(start, UTC).strftime("%Y%m%d"), start, start + 86400.0)


def month_of(wall: float) -> Period:
    t = datetime.fromtimestamp(wall, UTC)
    start = datetime(t.year, t.month, 1, tzinfo=UTC)
    end = datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=UTC)
    return Period(start.strftime("%Y%m"), start.timestamp(), end.timestamp())


class Periods:
    """The current day and month, recomputed only when the wall clock leaves them."""

    def __init__(self) -> None:
        self.day = self.month = Period("", math.inf, -math.inf)

    def at(self, wall: float) -> tuple[Period, Period]:
        if not self.day.start <= wall < self.day.end:
            self.day = day_of(wall)
        if not self.month.start <= wall < self.month.end:
            self.month = month_of(wall)
        return self.day, self.month


# -- refusals ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Refusal:
    reason: Reason
    scope: Scope
    limit: int
    wait: float  # seconds until the request could fit (budgets: until the period ends)
    requested: int  # tokens (or 1 request)
    left: int = 0  # budgets: tokens left in the period

    def rank(self) -> tuple[int, float]:
        """The refusal to report: one that waiting cannot fix soon first, then the longest wait."""
        return {"too_large": 3, "month": 2, "day": 1}.get(self.reason, 0), self.wait


def refuse(
    refusals: Sequence[Refusal], requests: Window | None, tokens: Window | None
) -> RateLimited | QuotaExceeded:
    """The error for the worst of ``refusals``, with the rate headers and Retry-After."""
    r = max(refusals, key=Refusal.rank)
    headers = rate_headers(requests, tokens)
    scope = r.scope.describe()
    if r.reason in ("day", "month"):
        period = "UTC day" if r.reason == "day" else "UTC month"
        headers.update(retry_headers(r.wait, retry=False))
        return QuotaExceeded(
            f"Token budget exhausted for {scope}: {r.limit} tokens per {period}, {max(0, r.left)} left,"
            f" and this request may use {r.requested} (prompt + max_tokens)."
            f" The budget renews in {duration(r.wait)}; a lower max_tokens may fit now.",
            headers=headers,
        )
    if r.reason == "too_large":
        headers.update(retry_headers(60.0, retry=False))
        return RateLimited(
            f"Request too large for the tokens per minute (TPM) of {scope}: limit {r.limit}, requested"
            f" {r.requested} (prompt + max_tokens). Lower max_tokens or shorten the prompt.",
            headers=headers,
        )
    headers.update(retry_headers(r.wait))
    if r.reason == "concurrent":
        message = f"Too many concurrent requests for {scope}: limit {r.limit}."
    elif r.reason == "requests":
        message = f"Rate limit reached for requests per minute (RPM) of {scope}: limit {r.limit}."
    else:
        message = (
            f"Rate limit reached for tokens per minute (TPM) of {scope}: limit {r.limit},"
            f" requested {r.requested}."
        )
    return RateLimited(f"{message} Please try again in {duration(r.wait)}.", headers=headers)
