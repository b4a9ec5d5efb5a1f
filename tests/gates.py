"""An embedded engine whose decoding a test holds: requests stay running until it lets them go.

Tests of what happens to a request in flight (a client that leaves) used to rely on the request
being long, which a fast machine finishes first. Here the request stays in flight, deterministically,
until the test opens the gate or the request is aborted.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from service.app import local_engine
from service.config import Settings
from service.domain import Delta
from service.engines.local.engine import LocalEngine
from service.engines.local.scheduler import Scheduler
from tests.engines.helpers import Choice, drain

if TYPE_CHECKING:
    from service.engines.local.rows import Job
    from service.engines.local.scheduler import _Row

POLL_SECONDS = 0.01  # how often a held step looks for cancelled jobs (a plain flag, set from the event loop)


class GatedScheduler(Scheduler):
    """Decodes only while ``gate`` is set; while it is clear, holds the batch once every row has sent a delta.

    The first delta goes out first so that a streaming client has its first chunk (a token may
    decode to no text yet). A held request whose job is cancelled leaves at once: while the gate is
    clear, an abort is its only way out. Nothing is admitted while the batch is held: a request
    submitted then waits, and joins the batch at the turn after the gate opens.
    """

    def __init__(self, *args: Any, gate: threading.Event, hold_rows: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate
        # The batch is held only once this many rows run: a request of several prompts (whose jobs
        # reach the queue one by one) is held whole, not with a prompt left waiting behind the gate.
        self.hold_rows = hold_rows
        self.holding = threading.Event()  # set while every running request is held at the gate
        self.aborted: set[str] = set()  # request ids whose rows were dropped as cancelled

    def _decode_step(self) -> None:
        while not self.gate.is_set() and not self._closing:
            self._drop_cancelled()
            if len(self._rows) < self.hold_rows or not all(_sent_a_delta(row) for row in self._rows):
                break
            self.holding.set()
            self.gate.wait(POLL_SECONDS)
        self.holding.clear()
        super()._decode_step()

    def _drop_cancelled(self) -> None:
        before = self._rows
        super()._drop_cancelled()
        kept = {id(row) for row in self._rows}
        self.aborted.update(row.job.request.request_id for row in before if id(row) not in kept)

    def _take_waiting(self) -> list[Job]:
        """Queued jobs cancelled before they ran (a first-token deadline, a client that left) count as
        aborted too: the turn after the gate opens drops them unrun."""
        with self._wake:
            self.aborted.update(job.request.request_id for job in self._waiting if job.cancelled)
        return super()._take_waiting()


def _sent_a_delta(row: _Row) -> bool:
    """The scheduler hands a row's queue time over on its first delta, and forgets it then."""
    return row.queue_seconds is None


class GatedEngine(LocalEngine):
    """The embedded engine on a :class:`GatedScheduler` held by ``gate``."""

    def __init__(self, *args: Any, gate: threading.Event, hold_rows: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, scheduler=partial(GatedScheduler, gate=gate, hold_rows=hold_rows), **kwargs)
        self.gate = gate

    @property
    def scheduler(self) -> GatedScheduler | None:
        return cast(GatedScheduler | None, self._scheduler)


def gated_engine(settings: Settings, gate: threading.Event, hold_rows: int = 1) -> GatedEngine:
    """The embedded engine that ``settings`` describe (as the app builds it), gated by ``gate``."""
    return cast(GatedEngine, local_engine(settings, partial(GatedEngine, gate=gate, hold_rows=hold_rows)))


async def queue_behind(held: GatedScheduler, stream: AsyncIterator[Delta]) -> asyncio.Task[dict[int, Choice]]:
    """Drain ``stream`` in a task, its request queued behind the held batch; then open the gate.

    The request joins the batch at the next turn: the batch cannot finish before it is queued.
    """
    assert await asyncio.to_thread(held.holding.wait, 10), "the batch was never held"
    waiting = held.waiting
    task = asyncio.ensure_future(drain(stream))
    async with asyncio.timeout(10):
        while held.waiting <= waiting:
            await asyncio.sleep(0.01)
    held.gate.set()
    return task
