"""A request's cancellation in one ``asyncio.Timeout``: its deadline, its client leaving, the drain.

Every generating request runs in a :class:`RequestScope`. Its deadline is a timeout's; a client
that leaves, or the drain's end, moves that timeout to "now". ``asyncio.Timeout`` (Python 3.11)
tells its own cancellation from anyone else's (``Task.uncancel``), so a server shutting down still
reads as a plain cancellation. anyio's ``CancelScope`` did this job before, at several times the
CPU per request (task-state lookups in a weak dictionary on every enter and exit): on the gateway's
hot path that was 5-8% of a request's CPU (docs/benchmarks.md, "Limits and the ledger").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Literal, TypeVar

T = TypeVar("T")
Reason = Literal["client", "deadline", "ended"]


class ScopeEnded(Exception):
    """The scope ended the work it ran; ``reason`` says why."""

    def __init__(self, reason: Reason):
        super().__init__(reason)
        self.reason = reason


class RequestScope:
    """Runs one request's work until it ends, its ``deadline`` (``loop.time()``) passes, or ``cancel``."""

    __slots__ = ("deadline", "reason", "_timeout")

    def __init__(self, deadline: float | None = None):
        self.deadline = deadline
        self.reason: Reason | None = None
        self._timeout: asyncio.Timeout | None = None

    def cancel(self, reason: Reason) -> None:
        """Ends the work now, or as soon as it starts (on the event loop's thread)."""
        if self.reason is None:
            self.reason = reason
        timeout = self._timeout
        if timeout is not None and not timeout.expired():
            timeout.reschedule(0)  # in the past: the timeout fires on the loop's next pass

    async def run(self, work: Awaitable[T]) -> T:
        """``await work``; ``ScopeEnded`` when this scope ended it (not when anyone else cancels it)."""
        timeout = asyncio.timeout_at(self.deadline)
        try:
            async with timeout:
                self._timeout = timeout
                if self.reason is not None:
                    timeout.reschedule(0)  # cancelled before it began
                return await work
        except TimeoutError:
            if not timeout.expired():
                raise  # the work's own TimeoutError
            if self.reason is None:
                self.reason = "deadline"
            raise ScopeEnded(self.reason) from None
        finally:
            self._timeout = None
