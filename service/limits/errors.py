"""The limiter's refusals: 429 over a limit or a budget, 503 when its backend is away (mode ``closed``).

They subclass ``service.errors`` classes, so the gateway's one handler renders them; each carries the
``headers`` its answer must send (``Retry-After``, ``retry-after-ms``, the ``x-ratelimit-*`` set and, where a
retry cannot help soon, ``x-should-retry: false``)::

    RateLimitError (429)
    ├── RateLimited          type rate_limit_error     code rate_limit_exceeded
    └── QuotaExceeded        type insufficient_quota   code insufficient_quota
    EngineUnavailableError (503)
    └── LimitsUnavailable    type service_unavailable  code limits_unavailable
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import EngineUnavailableError, RateLimitError
from .headers import retry_headers


class RateLimited(RateLimitError):
    """Over a requests-per-minute, tokens-per-minute or concurrency limit: retry after ``Retry-After``."""

    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, headers: Mapping[str, str]):
        super().__init__(message)
        self.headers = dict(headers)


class QuotaExceeded(RateLimitError):
    """A day or month token budget cannot hold this request (OpenAI's ``insufficient_quota``)."""

    error_type = "insufficient_quota"
    default_code = "insufficient_quota"

    def __init__(self, message: str, *, headers: Mapping[str, str]):
        super().__init__(message)
        self.headers = dict(headers)


class LimitsUnavailable(EngineUnavailableError):
    """The limits backend (Redis) cannot be reached and ``limits_failure_mode`` is ``closed``."""

    default_code = "limits_unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.headers = retry_headers(retry_after)
