"""Rate limits and token budgets, per key, department and tenant; in process or cluster-wide in Redis.

The gateway builds one limiter from its settings (``build_limiter``), then for each request::

    scopes = request_scopes(tenant.name, tenant.limits, department.name, department.limits,
                            principal.key_id, principal.limits)
    ticket = await limiter.admit(scopes, prompt_tokens + max_tokens)  # 429 RateLimited / QuotaExceeded, 503
    try:
        ...                                          # answer, with ticket.headers()
    finally:
        await ticket.settle(prompt_tokens + completion_tokens)

See docs/limits.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import UNLIMITED, Clock, Limiter, LimiterStatus, ScopeUsage, Ticket
from .errors import LimitsUnavailable, QuotaExceeded, RateLimited
from .headers import duration
from .memory import MemoryLimiter
from .policy import Limits, LimitsSpec, Scope, request_scopes

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "UNLIMITED",
    "Clock",
    "Limiter",
    "LimiterStatus",
    "Limits",
    "LimitsSpec",
    "LimitsUnavailable",
    "MemoryLimiter",
    "QuotaExceeded",
    "RateLimited",
    "Scope",
    "ScopeUsage",
    "Ticket",
    "build_limiter",
    "duration",
    "request_scopes",
]


def build_limiter(settings: Settings) -> Limiter:
    """The backend the settings name (``limits_backend``); Redis is imported only when chosen."""
    if settings.limits_backend == "redis":
        from .redis_backend import RedisLimiter

        return RedisLimiter(settings.redis_url, failure_mode=settings.limits_failure_mode)
    return MemoryLimiter()
