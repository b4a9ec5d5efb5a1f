"""OpenAI's rate-limit headers, for the tightest scope of a request.

::

    x-ratelimit-limit-requests       the requests-per-minute limit
    x-ratelimit-remaining-requests   requests left now (after this one)
    x-ratelimit-reset-requests       until the bucket is full again, e.g. "1s", "6m0s", "250ms"
    x-ratelimit-limit-tokens         the tokens-per-minute limit
    x-ratelimit-remaining-tokens     tokens left now (after this request's reservation)
    x-ratelimit-reset-tokens         until the bucket is full again

"Tightest" is the scope with the fewest requests (tokens) left; the two groups may come from different
scopes. A group is left out when no scope of the request has that limit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

LIMIT_REQUESTS = "x-ratelimit-limit-requests"
REMAINING_REQUESTS = "x-ratelimit-remaining-requests"
RESET_REQUESTS = "x-ratelimit-reset-requests"
LIMIT_TOKENS = "x-ratelimit-limit-tokens"
REMAINING_TOKENS = "x-ratelimit-remaining-tokens"
RESET_TOKENS = "x-ratelimit-reset-tokens"
RETRY_AFTER = "retry-after"
RETRY_AFTER_MS = "retry-after-ms"  # read first by the openai SDK: it waits exactly this long
SHOULD_RETRY = "x-should-retry"  # "false": the openai SDK does not retry (a budget, a request too large)


class Window(NamedTuple):
    """One token bucket as the headers show it: its limit per minute and its level (may be below 0)."""

    limit: int
    level: float

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.level))

    @property
    def reset(self) -> float:
        """Seconds until the bucket is full again (it refills ``limit`` per 60 s)."""
        return max(0.0, (self.limit - self.level) * 60.0 / self.limit)


def duration(seconds: float) -> str:
    """OpenAI's (Go's) duration format: ``0s``, ``250ms``, ``1s``, ``8.64s``, ``6m0s``, ``1h2m3s``.

    Rounded up to the millisecond, so that a client that waits this long finds the room it waited for.
    """
    if seconds <= 0:
        return "0s"
    ms = math.ceil(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms"
    minutes, ms = divmod(ms, 60_000)
    secs = str(ms // 1000) if ms % 1000 == 0 else f"{ms / 1000:.3f}".rstrip("0")
    if not minutes:
        return f"{secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


def rate_headers(requests: Window | None, tokens: Window | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if requests is not None:
        limit, level = requests
        headers[LIMIT_REQUESTS] = str(limit)
        headers[REMAINING_REQUESTS] = str(max(0, math.floor(level)))
        headers[RESET_REQUESTS] = duration((limit - level) * 60.0 / limit)
    if tokens is not None:
        limit, level = tokens
        headers[LIMIT_TOKENS] = str(limit)
        headers[REMAINING_TOKENS] = str(max(0, math.floor(level)))
        headers[RESET_TOKENS] = duration((limit - level) * 60.0 / limit)
    return headers


def retry_headers(wait: float, retry: bool = True) -> dict[str, str]:
    """``Retry-After`` (whole seconds, at least 1), ``retry-after-ms``; ``x-should-retry: false`` if not."""
    headers = {RETRY_AFTER: str(max(1, math.ceil(wait))), RETRY_AFTER_MS: str(max(1, math.ceil(wait * 1000)))}
    if not retry:
        headers[SHOULD_RETRY] = "false"
    return headers
