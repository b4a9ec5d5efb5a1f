"""The in-process backend (``limits_backend: memory``, the default): counters in this process's memory.

Per minute: token buckets. A bucket holds up to the limit and refills at limit/60 per second, on the
monotonic clock; a request takes 1 (requests) or its estimate (tokens), and ``settle`` puts back what it
did not use (or takes what it used beyond). Budgets: one counter per scope and UTC day or month. In
flight: one counter per scope. A ticket holds its counters themselves, so ``settle`` is arithmetic.

Everything runs on the event loop without awaiting, so one admission is atomic; the limiter is not for
use from several threads. Its limits hold for this process only: several gateways need Redis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .base import (
    CONCURRENCY_RETRY,
    UNLIMITED,
    Clock,
    LimiterStatus,
    Periods,
    Refusal,
    ScopeUsage,
    SystemClock,
    Ticket,
    refuse,
)
from .headers import Window, rate_headers
from .policy import Scope


class _Bucket:
    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, capacity: int, now: float):
        self.capacity = capacity
        self.rate = capacity / 60.0
        self.level = float(capacity)
        self.stamp = now

    def refill(self, capacity: int, now: float) -> float:
        if capacity != self.capacity:  # the tenants file changed the limit
            self.capacity, self.rate = capacity, capacity / 60.0
        level = self.level + (now - self.stamp) * self.rate
        if level > capacity:
            level = capacity
        self.level, self.stamp = level, now
        return level


class _Counter:
    __slots__ = ("period", "value")

    def __init__(self, period: str = ""):
        self.period = period
        self.value = 0


class _State:
    __slots__ = ("day", "inflight", "month", "requests", "tokens")

    def __init__(self) -> None:
        self.requests: _Bucket | None = None
        self.tokens: _Bucket | None = None
        self.inflight = _Counter()
        self.day = _Counter()
        self.month = _Counter()


class _MemoryTicket:
    __slots__ = ("_budgets", "_buckets", "_estimate", "_headers", "_inflight", "_requests", "_tokens")

    def __init__(
        self,
        estimate: int,
        buckets: list[_Bucket],
        inflight: list[_Counter],
        budgets: list[_Counter],
        requests: Window | None,
        tokens: Window | None,
    ):
        self._estimate = estimate
        self._buckets: list[_Bucket] | None = buckets
        self._inflight = inflight
        self._budgets = budgets
        self._requests = requests
        self._tokens = tokens
        self._headers: Mapping[str, str] | None = None

    async def settle(self, actual_tokens: int | None = None) -> None:
        buckets = self._buckets
        if buckets is None:
            return
        self._buckets = None
        unused = 0 if actual_tokens is None else self._estimate - max(0, actual_tokens)
        for bucket in buckets:
            level = bucket.level + unused
            bucket.level = bucket.capacity if level > bucket.capacity else level
        for counter in self._budgets:
            counter.value -= unused
        for counter in self._inflight:
            counter.value -= 1

    def headers(self) -> Mapping[str, str]:
        if self._headers is None:
            self._headers = rate_headers(self._requests, self._tokens)
        return self._headers


class MemoryLimiter:
    """Counters in this process (see the module doc)."""

    def __init__(self, clock: Clock | None = None):
        self._clock = clock or SystemClock()
        self._states: dict[str, _State] = {}
        self._periods = Periods()

    async def admit(self, scopes: Sequence[Scope], estimated_tokens: int) -> Ticket:
        return self.admit_now(scopes, estimated_tokens) if scopes else UNLIMITED

    def admit_now(self, scopes: Sequence[Scope], estimated_tokens: int) -> Ticket:  # noqa: C901
        """``admit`` without the coroutine: the same, for callers that are not async."""
        if not scopes:
            return UNLIMITED
        estimate = estimated_tokens if estimated_tokens > 0 else 0
        now = self._clock.monotonic()
        refusals: list[Refusal] | None = None
        # the tightest buckets, as levels after this request: (limit, level)
        rpm_limit, rpm_level, tpm_limit, tpm_level = 0, math.inf, 0, math.inf
        states: list[_State] = []
        for scope in scopes:
            limits = scope.limits
            state = self._states.get(scope.id)
            if state is None:
                state = self._states[scope.id] = _State()
            states.append(state)
            if (rpm := limits.requests_per_minute) is not None:
                bucket = state.requests
                if bucket is None:
                    bucket = state.requests = _Bucket(rpm, now)
                level = bucket.refill(rpm, now)
                if level < 1:
                    refusals = refusals or []
                    refusals.append(Refusal("requests", scope, rpm, (1 - level) / bucket.rate, 1))
                if level - 1 < rpm_level:
                    rpm_limit, rpm_level = rpm, level - 1
            if (tpm := limits.tokens_per_minute) is not None:
                bucket = state.tokens
                if bucket is None:
                    bucket = state.tokens = _Bucket(tpm, now)
                level = bucket.refill(tpm, now)
                if estimate > tpm:
                    refusals = refusals or []
                    refusals.append(Refusal("too_large", scope, tpm, 60.0, estimate))
                elif level < estimate:
                    refusals = refusals or []
                    refusals.append(Refusal("tokens", scope, tpm, (estimate - level) / bucket.rate, estimate))
                if level - estimate < tpm_level:
                    tpm_limit, tpm_level = tpm, level - estimate
            if (concurrent := limits.concurrent_requests) is not None and state.inflight.value >= concurrent:
                refusals = refusals or []
                refusals.append(Refusal("concurrent", scope, concurrent, CONCURRENCY_RETRY, 1))
            if limits.tokens_per_day is not None or limits.tokens_per_month is not None:
                refusals = self._check_budgets(scope, state, estimate, refusals)
        if refusals:  # nothing was taken: the headers report the levels as they are
            raise refuse(
                refusals,
                Window(rpm_limit, rpm_level + 1) if rpm_limit else None,
                Window(tpm_limit, tpm_level + estimate) if tpm_limit else None,
            )
        buckets: list[_Bucket] = []
        inflight: list[_Counter] = []
        budgets: list[_Counter] = []
        for scope, state in zip(scopes, states, strict=True):
            limits = scope.limits
            if state.requests is not None and limits.requests_per_minute is not None:
                state.requests.level -= 1
            if state.tokens is not None and limits.tokens_per_minute is not None:
                state.tokens.level -= estimate
                buckets.append(state.tokens)
            if limits.concurrent_requests is not None:
                state.inflight.value += 1
                inflight.append(state.inflight)
            if limits.tokens_per_day is not None:
                state.day.value += estimate
                budgets.append(state.day)
            if limits.tokens_per_month is not None:
                state.month.value += estimate
                budgets.append(state.month)
        return _MemoryTicket(
            estimate,
            buckets,
            inflight,
            budgets,
            Window(rpm_limit, rpm_level) if rpm_limit else None,
            Window(tpm_limit, tpm_level) if tpm_limit else None,
        )

    def _check_budgets(
        self, scope: Scope, state: _State, estimate: int, refusals: list[Refusal] | None
    ) -> list[Refusal] | None:
        wall = self._clock.time()
        day, month = self._periods.at(wall)
        limits = scope.limits
        if (budget := limits.tokens_per_day) is not None:
            if state.day.period != day.id:  # a new day; the tickets of the last one keep the old counter
                state.day = _Counter(day.id)
            if (used := state.day.value) + estimate > budget:
                refusals = refusals or []
                refusals.append(Refusal("day", scope, budget, day.end - wall, estimate, budget - used))
        if (budget := limits.tokens_per_month) is not None:
            if state.month.period != month.id:
                state.month = _Counter(month.id)
            if (used := state.month.value) + estimate > budget:
                refusals = refusals or []
                refusals.append(Refusal("month", scope, budget, month.end - wall, estimate, budget - used))
        return refusals

    async def usage(self, scope: Scope) -> ScopeUsage:
        limits, state = scope.limits, self._states.get(scope.id) or _State()
        now = self._clock.monotonic()
        day, month = self._periods.at(self._clock.time())

        def level(bucket: _Bucket | None, limit: int | None) -> int | None:
            if limit is None:
                return None
            return limit if bucket is None else max(0, int(bucket.refill(limit, now)))

        return ScopeUsage(
            requests_remaining=level(state.requests, limits.requests_per_minute),
            tokens_remaining=level(state.tokens, limits.tokens_per_minute),
            concurrent=state.inflight.value if limits.concurrent_requests is not None else None,
            tokens_today=(state.day.value if state.day.period == day.id else 0)
            if limits.tokens_per_day is not None
            else None,
            tokens_this_month=(state.month.value if state.month.period == month.id else 0)
            if limits.tokens_per_month is not None
            else None,
        )

    def status(self) -> LimiterStatus:
        return LimiterStatus("memory", True, "open", 0, 0, 0)

    async def aclose(self) -> None:
        self._states.clear()
