"""The Redis backend (``limits_backend: redis``): one set of counters for every gateway of the cluster.

One round trip per admission (the ``ADMIT`` script checks every limit of every scope, then takes them all
or none) and at most one per settlement (``SETTLE``; none when there is nothing to give back). The
algorithms are the memory backend's; see ``scripts.py`` for the keys.

Failure: connecting and every reply have a short deadline (``timeout``, 100 ms by default), and redis-py
does not retry. (Waiting for a free connection of the pool is this process's own load, not Redis's; it is
bounded apart, by ``pool_wait``.) When a call fails the backend is marked away: for ``retry_interval``
seconds no call is tried, and ``failure_mode`` decides (``open``: admitted without limits; ``closed``: 503
``LimitsUnavailable``). Then one request probes Redis again, and its success ends the outage (a call begun
before the outage that ends late does not). Each outage is logged once when it begins and once when it
ends; ``status()`` counts them for /metrics.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from . import scripts
from .base import (
    UNLIMITED,
    Clock,
    LimiterStatus,
    Periods,
    Reason,
    Refusal,
    ScopeUsage,
    SystemClock,
    Ticket,
    refuse,
)
from .errors import LimitsUnavailable
from .headers import Window, rate_headers
from .policy import Scope

log = logging.getLogger(__name__)

FailureMode = Literal["open", "closed"]
_REASONS: dict[int, Reason] = {
    1: "requests",
    2: "tokens",
    3: "too_large",
    4: "concurrent",
    5: "day",
    6: "month",
}
_BACKEND_ERRORS = (RedisError, OSError, TimeoutError)
_KEEP = 86400  # budget counters outlive their period by a day, for the admin API


def _keys(prefix: str, scope: Scope, day: str, month: str) -> list[str]:
    base = f"{prefix}{{{scope.tenant}}}:{scope.id}"
    return [f"{base}:rpm", f"{base}:tpm", f"{base}:inflight", f"{base}:day:{day}", f"{base}:month:{month}"]


def _limit_args(scope: Scope) -> list[int]:
    lim = scope.limits
    return [
        lim.requests_per_minute or 0,
        lim.tokens_per_minute or 0,
        lim.concurrent_requests or 0,
        lim.tokens_per_day or 0,
        lim.tokens_per_month or 0,
    ]


class _RedisTicket:
    __slots__ = (
        "_done",
        "_estimate",
        "_headers",
        "_keys",
        "_limiter",
        "_member",
        "_refundable",
        "_settle_args",
        "_windows",
    )

    def __init__(
        self,
        limiter: RedisLimiter,
        keys: list[str],
        settle_args: list[int],
        estimate: int,
        member: str | None,
        windows: tuple[Window | None, Window | None],
    ):
        self._limiter = limiter
        self._keys = keys
        self._settle_args = settle_args  # per scope: tpm, concurrent, day, month
        self._estimate = estimate
        self._member = member  # the ticket's id in the in-flight sets; None: it holds no slot
        self._refundable = any(v for i, v in enumerate(settle_args) if i % 4 != 1)  # tpm or a budget
        self._windows = windows
        self._headers: Mapping[str, str] | None = None
        self._done = False

    async def settle(self, actual_tokens: int | None = None) -> None:
        if self._done:
            return
        self._done = True
        unused = 0 if actual_tokens is None else self._estimate - max(0, actual_tokens)
        if self._member is not None:
            self._limiter._live.pop(self._member, None)
        elif unused == 0 or not self._refundable:
            return  # no slot to free, nothing to give back: no round trip
        # shielded: a second cancellation of the caller does not cut the settlement in half
        await asyncio.shield(
            self._limiter._settle(self._keys, [unused, self._member or "", *self._settle_args])
        )

    def headers(self) -> Mapping[str, str]:
        if self._headers is None:
            self._headers = rate_headers(*self._windows)
        return self._headers


class RedisLimiter:
    """Counters in Redis, shared by every gateway that points at it (see the module doc)."""

    def __init__(
        self,
        url: str,
        *,
        failure_mode: FailureMode = "open",
        timeout: float = 0.1,
        retry_interval: float = 1.0,
        lease: float = 60.0,
        connections: int = 128,
        pool_wait: float = 1.0,
        prefix: str = "loragate:limits:",
        clock: Clock | None = None,
    ):
        # a bounded pool where callers wait for a free connection rather than fail (redis-py's default pool
        # raises MaxConnectionsError past 100, which would read as an outage). That wait is this process's
        # own load, not Redis's: it has its own, longer bound; Redis's connect and replies have `timeout`.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=connections,
            timeout=pool_wait,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._redis: aioredis.Redis = aioredis.Redis.from_pool(pool)
        kwargs = self._redis.connection_pool.connection_kwargs  # where, for the logs: not the password
        self._where = f"redis {kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"
        self._failure_mode = failure_mode
        self._deadline = timeout + pool_wait
        self._retry_interval = retry_interval
        self._lease_ms = max(1, round(lease * 1000))
        self._prefix = prefix
        self._clock = clock or SystemClock()
        self._periods = Periods()
        self._admit: AsyncScript = self._redis.register_script(scripts.ADMIT)
        self._settle_script: AsyncScript = self._redis.register_script(scripts.SETTLE)
        self._renew: AsyncScript = self._redis.register_script(scripts.RENEW)
        self._usage: AsyncScript = self._redis.register_script(scripts.USAGE)
        self._ids = itertools.count()
        self._instance = secrets.token_hex(6)
        self._live: dict[str, _RedisTicket] = {}  # tickets holding slots, whose leases the renewer extends
        self._renewer: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._outages = self._admitted_unlimited = self._refused_unavailable = 0

    # -- admission ------------------------------------------------------------------------------------
    async def admit(self, scopes: Sequence[Scope], estimated_tokens: int) -> Ticket:
        if not scopes:
            return UNLIMITED
        if self._down_since is not None:
            now = self._clock.monotonic()
            if now < self._retry_at:
                return self._degraded()
            self._retry_at = now + self._retry_interval  # this request probes; the others keep going
        estimate = max(0, estimated_tokens)
        wall = self._clock.time()
        day, month = self._periods.at(wall)
        keys: list[str] = []
        args: list[Any] = [estimate, "", self._lease_ms, int(day.end) + _KEEP, int(month.end) + _KEEP]
        settle_args: list[int] = []
        concurrent = False
        for scope in scopes:
            keys += _keys(self._prefix, scope, day.id, month.id)
            limits = _limit_args(scope)
            args += limits
            settle_args += limits[1:]
            concurrent = concurrent or limits[2] > 0
        member = f"{self._instance}:{next(self._ids)}" if concurrent else None
        args[1] = member or ""
        started = self._clock.monotonic()
        try:
            reply = await self._call(self._admit, keys, args)
        except _BACKEND_ERRORS as exc:
            return self._unavailable(exc)
        self._available(started)
        windows = (
            Window(reply[1], reply[2] / 1000) if reply[1] else None,
            Window(reply[3], reply[4] / 1000) if reply[3] else None,
        )
        if not reply[0]:
            waits = {"day": day.end - wall, "month": month.end - wall}
            refusals = [
                Refusal(
                    reason := _REASONS[reply[j]],
                    scopes[reply[j + 1] - 1],
                    reply[j + 2],
                    waits.get(reason, reply[j + 3] / 1000),
                    1 if reason in ("requests", "concurrent") else estimate,
                    reply[j + 4],
                )
                for j in range(5, len(reply), 5)
            ]
            raise refuse(refusals, *windows)
        ticket = _RedisTicket(self, keys, settle_args, estimate, member, windows)
        if member is not None:
            self._live[member] = ticket
            if self._renewer is None or self._renewer.done():
                self._renewer = asyncio.create_task(self._renew_leases(), name="limits-lease-renewer")
        return ticket

    async def _settle(self, keys: list[str], args: list[Any]) -> None:
        if self._down_since is not None and self._clock.monotonic() < self._retry_at:
            return  # away: the leases will end by themselves; the reservation stays charged
        started = self._clock.monotonic()
        try:
            await self._call(self._settle_script, keys, args)
        except _BACKEND_ERRORS as exc:
            self._unavailable(exc, admitting=False)
        else:
            self._available(started)

    async def _call(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        async with asyncio.timeout(self._deadline):  # a belt: redis-py's own timeouts come first
            return await script(keys=keys, args=args)

    # -- outages --------------------------------------------------------------------------------------
    def _unavailable(self, exc: BaseException, admitting: bool = True) -> Ticket:
        now = self._clock.monotonic()
        self._retry_at = now + self._retry_interval
        if self._down_since is None:
            self._down_since = now
            self._outages += 1
            verdict = (
                "admitting requests without limits" if self._failure_mode == "open" else "refusing requests"
            )
            log.warning(
                "limits backend %s unreachable (%s: %s): %s (limits_failure_mode %s) until it returns",
                self._where,
                type(exc).__name__,
                exc,
                verdict,
                self._failure_mode,
            )
        return self._degraded() if admitting else UNLIMITED

    def _degraded(self) -> Ticket:
        if self._failure_mode == "open":
            self._admitted_unlimited += 1
            return UNLIMITED
        self._refused_unavailable += 1
        raise LimitsUnavailable("The rate-limit service is unavailable. Please try again shortly.")

    def _available(self, started: float) -> None:
        """A call begun at ``started`` succeeded: it ends an outage only if it began after the outage did
        (a call begun before may just have been slow), so an outage ends once, on a probe.
        """
        if self._down_since is not None and started >= self._down_since:
            log.warning(
                "limits backend %s is back after %.1f s: limits apply again",
                self._where,
                self._clock.monotonic() - self._down_since,
            )
            self._down_since = None

    # -- leases ---------------------------------------------------------------------------------------
    async def _renew_leases(self) -> None:
        """Every third of a lease, extend the leases of this gateway's live tickets (one call per tenant)."""
        while self._live:
            await asyncio.sleep(self._lease_ms / 3000)
            by_tenant: dict[str, tuple[list[str], list[Any]]] = defaultdict(lambda: ([], [self._lease_ms]))
            for member, ticket in list(self._live.items()):
                for i in range(0, len(ticket._keys), 5):
                    if ticket._settle_args[(i // 5) * 4 + 1]:
                        key = ticket._keys[i + 2]
                        keys, args = by_tenant[key[key.index("{") : key.index("}")]]
                        keys.append(key)
                        args.append(member)
            for keys, args in by_tenant.values():
                try:
                    await self._call(self._renew, keys, args)
                except _BACKEND_ERRORS as exc:
                    log.debug("limits: renewing leases failed (%s); they are retried", exc)
        self._renewer = None

    # -- the rest -------------------------------------------------------------------------------------
    async def usage(self, scope: Scope) -> ScopeUsage:
        day, month = self._periods.at(self._clock.time())
        limits = scope.limits
        reply = await self._call(
            self._usage,
            _keys(self._prefix, scope, day.id, month.id),
            [limits.requests_per_minute or 0, limits.tokens_per_minute or 0],
        )
        return ScopeUsage(
            requests_remaining=max(0, reply[0]) if limits.requests_per_minute else None,
            tokens_remaining=max(0, reply[1]) if limits.tokens_per_minute else None,
            concurrent=reply[2] if limits.concurrent_requests else None,
            tokens_today=reply[3] if limits.tokens_per_day else None,
            tokens_this_month=reply[4] if limits.tokens_per_month else None,
        )

    def status(self) -> LimiterStatus:
        return LimiterStatus(
            "redis",
            self._down_since is None,
            self._failure_mode,
            self._outages,
            self._admitted_unlimited,
            self._refused_unavailable,
        )

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        await self._redis.aclose()
