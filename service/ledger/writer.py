"""The ledger's writer: records are committed off the request path, and each caller learns when its record is.

``Ledger.record(rec)`` returns a future; the records of one pass of the event loop go onto the
writer's queue together, at the end of that pass (one wake of the writer thread per pass, not per
record: under load that wake was the ledger's largest cost on the event loop). One thread owns the writer
connection; it takes everything queued, commits it in one transaction (group commit) and then
resolves the futures of that batch on their event loop (one ``call_soon_threadsafe`` per batch).
The gateway awaits the future before it sends the last bytes of an answer: an answer that a
client received whole is in the ledger, even if the process is killed right after (kill -9).
What a crash can lose is bounded by the records of answers still in flight, plus, while the
database is unreachable, the backlog below.

When the queue was idle the record is committed at once (one commit per request at low load: no
batch wait). When the writer wakes to a backlog (load), it gathers until ``batch_seconds`` after
its previous commit, so the commit rate stays bounded while each answer waits at most about one
batch period.

A failed commit fails the futures of its batch with ``LedgerUnavailable`` (the gateway answers
anyway), keeps the records in memory (up to ``max_backlog``; the oldest are dropped beyond) and
writes them with a later batch once the database answers again. A record that the database
refuses on its own (a data error) is dropped and its future fails with ``LedgerError``: it must
not block the records behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeAlias, TypeVar

from .records import AuditEntry, AuditQuery, ReportQuery, ReportRow, UsageRecord
from .store import LedgerClosed, LedgerError, LedgerStore, LedgerUnavailable

log = logging.getLogger(__name__)
_R = TypeVar("_R")

Entry: TypeAlias = UsageRecord | AuditEntry
_Item: TypeAlias = tuple[Entry, "asyncio.Future[None] | None", "asyncio.AbstractEventLoop | None"]
_Items: TypeAlias = list[_Item]  # what goes on the queue: the records of one loop pass, or one record
_CLOSE = object()  # the queue's last item
MAX_BATCH = 5000  # records per transaction, at most
RETRY_FIRST, RETRY_MAX = 0.2, 10.0  # seconds between attempts to reach a lost database


@dataclass
class LedgerStats:
    """Counters since the ledger opened (for /metrics)."""

    committed: int = 0  # records and audit entries in the database
    batches: int = 0  # transactions committed
    failed_batches: int = 0
    dropped: int = 0  # refused by the database, or pushed out of a full backlog
    backlog: int = 0  # waiting in memory for the database to come back
    purged: int = 0  # records whose text the retention cleared


class Ledger:
    """Usage records and audit entries, committed by one writer thread. Use ``open_ledger(url)``."""

    def __init__(
        self,
        open_store: Callable[[], LedgerStore],
        *,
        batch_seconds: float = 0.001,
        purge_every: float = 3600.0,
        max_backlog: int = 100_000,
        name: str = "ledger",
    ) -> None:
        self._open_store = open_store
        self._batch_seconds = batch_seconds
        self._purge_every = purge_every
        self._name = name
        self._queue: queue.SimpleQueue[_Items | object] = queue.SimpleQueue()
        self._pending: dict[asyncio.AbstractEventLoop, _Items] = {}  # this loop pass's records, per loop
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="loragate-ledger", daemon=True)
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self.stats = LedgerStats()
        # the writer thread's state
        self._store: LedgerStore | None = None
        self._backlog: deque[Entry] = deque(maxlen=max_backlog)
        self._retry_at = 0.0
        self._retry_delay = RETRY_FIRST
        self._last_commit = float("-inf")
        # reports: a second connection, used by one caller at a time
        self._reader: LedgerStore | None = None
        self._reader_lock = threading.Lock()

    def start(self) -> Ledger:
        """Starts the writer; raises what opening the database raised (bad URL, unreachable, newer schema)."""
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error
        return self

    # -- the request path (the event loop's thread) ------------------------------------------------
    def record(self, record: UsageRecord) -> asyncio.Future[None]:
        """Queues ``record``; the future resolves once it is committed.

        It fails with ``LedgerUnavailable`` when its batch could not be committed (the record
        stays in memory and is written later) and with ``LedgerError`` when the database refused it.
        Call it on the event loop; ``record_nowait`` from anywhere.
        """
        return self._submit(record)

    def audit(self, entry: AuditEntry) -> asyncio.Future[None]:
        """Queues an admin action, as ``record`` does; await it before answering the admin."""
        return self._submit(entry)

    def record_nowait(self, record: UsageRecord) -> None:
        """Queues ``record`` with no one waiting for it (a failed request, a thread without a loop)."""
        if self._closed:
            raise LedgerClosed(f"the {self._name} is closed")
        self._queue.put([(record, None, None)])

    def _submit(self, entry: Entry) -> asyncio.Future[None]:
        if self._closed:
            raise LedgerClosed(f"the {self._name} is closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._hand_over, loop)
        pending.append((entry, future, loop))
        return future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        items = self._pending.pop(loop, None)
        if items:
            self._queue.put(items)

    # -- reads (blocking; the admin API runs them in a worker thread) ------------------------------
    def usage_report(self, query: ReportQuery) -> list[ReportRow]:
        return self._read(lambda store: store.usage_report(query))

    def audit_log(self, query: AuditQuery) -> list[AuditEntry]:
        return self._read(lambda store: store.audit_log(query))

    def _read(self, query: Callable[[LedgerStore], list[_R]]) -> list[_R]:
        with self._reader_lock:
            if self._reader is None:
                self._reader = self._open_store()
            try:
                return query(self._reader)
            except Exception:
                self._close_quietly(self._reader)  # a broken connection is opened afresh next time
                self._reader = None
                raise

    # -- shutdown ------------------------------------------------------------------------------------
    def close(self, timeout: float | None = 60.0) -> None:
        """Writes everything queued, then closes the database; ``record`` then raises ``LedgerClosed``."""
        if not self._closed:
            self._closed = True
            for loop in list(self._pending):  # records of a loop pass that has not ended yet
                self._hand_over(loop)
            self._queue.put(_CLOSE)
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._reader_lock:
            if self._reader is not None:
                self._close_quietly(self._reader)
                self._reader = None

    async def aclose(self, timeout: float | None = 60.0) -> None:
        await asyncio.to_thread(self.close, timeout)

    # -- the writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._store = self._open_store()
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        next_purge = time.monotonic()
        closing = False
        while not closing:
            batch, closing = self._next_batch(self._timeout(next_purge))
            try:
                self._commit(batch)
            except Exception as exc:  # a bug here must not leave answers waiting for ever
                log.exception("%s: the writer failed", self._name)
                self._settle(batch, LedgerError(f"the {self._name}'s writer failed: {exc}"))
            if time.monotonic() >= next_purge:
                self._purge()
                next_purge = time.monotonic() + self._purge_every
        stragglers, _ = self._drain([])  # from record_nowait racing close() on another thread
        self._retry_at = 0.0  # a last attempt, whatever the backoff says
        self._commit(stragglers)
        if self._backlog:
            log.error("%s closed with %d records it could not write", self._name, len(self._backlog))
        if self._store is not None:
            self._close_quietly(self._store)
            self._store = None

    def _timeout(self, next_purge: float) -> float:
        wake = next_purge
        if self._backlog:
            wake = min(wake, self._retry_at)
        return max(0.0, wake - time.monotonic())

    def _next_batch(self, timeout: float) -> tuple[list[_Item], bool]:
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return [], False
        if first is _CLOSE:
            return self._drain([])[0], True
        batch, closing = self._drain(list(first))  # type: ignore[call-overload]
        if len(batch) > 1 and not closing:
            # a backlog: under load. Gather until a batch period after the previous commit.
            deadline = self._last_commit + self._batch_seconds
            while len(batch) < MAX_BATCH and (left := deadline - time.monotonic()) > 0:
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if item is _CLOSE:
                    return self._drain(batch)[0], True
                batch.extend(item)  # type: ignore[arg-type]
        return batch, closing

    def _drain(self, batch: list[_Item]) -> tuple[list[_Item], bool]:
        """Adds what is queued now to ``batch``; whether the close marker was among it."""
        closing = False
        while len(batch) < MAX_BATCH or closing:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _CLOSE:
                closing = True
            else:
                batch.extend(item)  # type: ignore[arg-type]
        return batch, closing

    def _commit(self, batch: list[_Item]) -> None:
        entries = [*self._backlog, *(entry for entry, _, _ in batch)]
        if not entries:
            return
        if self._store is None and time.monotonic() < self._retry_at:
            self._hold(batch, LedgerUnavailable(f"the {self._name}'s database is unreachable"))
            return
        started = time.monotonic()
        try:
            try:
                self._write(entries)
            except Exception as exc:
                if _refused(exc):
                    raise
                self._drop_store()  # a stale connection (the database restarted)? Once more on a fresh one.
                self._write(entries)
        except Exception as exc:
            self.stats.failed_batches += 1
            if _refused(exc):
                self._one_by_one(batch, entries, exc)
            else:
                self._unreachable(batch, exc)
            return
        self._last_commit = started
        self._retry_delay = RETRY_FIRST
        self.stats.batches += 1
        self.stats.committed += len(entries)
        self._backlog.clear()
        self.stats.backlog = 0
        self._settle(batch, None)

    def _write(self, entries: Sequence[Entry]) -> None:
        if self._store is None:
            self._store = self._open_store()
        usage = [e for e in entries if isinstance(e, UsageRecord)]
        audit = [e for e in entries if isinstance(e, AuditEntry)]
        self._store.write(usage, audit)

    def _one_by_one(self, batch: list[_Item], entries: list[Entry], error: Exception) -> None:
        """The database refused part of the batch: one transaction per record; the refused are dropped."""
        log.warning(
            "%s: a batch of %d was refused (%s); writing it record by record", self._name, len(entries), error
        )
        futures = {id(entry): (future, loop) for entry, future, loop in batch}
        items: list[_Item] = [(entry, *futures.get(id(entry), (None, None))) for entry in entries]
        self._backlog.clear()
        for index, item in enumerate(items):
            try:
                self._write([item[0]])
            except Exception as exc:
                if not _refused(exc):
                    self._unreachable(items[index:], exc)
                    return
                log.error("%s dropped a record the database refused: %s (%r)", self._name, exc, item[0])
                self.stats.dropped += 1
                self._settle([item], LedgerError(f"the {self._name}'s database refused the record: {exc}"))
            else:
                self.stats.committed += 1
                self._settle([item], None)
        self.stats.backlog = 0

    def _unreachable(self, items: list[_Item], error: Exception) -> None:
        """The database cannot be reached (or cannot write): keep the records, try again later."""
        self._drop_store()
        log.warning("%s: cannot write (%s); retrying in %.1f s", self._name, error, self._retry_delay)
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        self._hold(items, LedgerUnavailable(f"the {self._name} could not commit: {error}"))

    def _drop_store(self) -> None:
        if self._store is not None:
            self._close_quietly(self._store)
            self._store = None

    def _hold(self, batch: list[_Item], error: LedgerError) -> None:
        for entry, _, _ in batch:
            if len(self._backlog) == self._backlog.maxlen:
                self.stats.dropped += 1  # the oldest goes
            self._backlog.append(entry)
        self.stats.backlog = len(self._backlog)
        self._settle(batch, error)

    def _settle(self, batch: Sequence[_Item], error: LedgerError | None) -> None:
        waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, future, loop in batch:
            if future is not None and loop is not None:
                waiting.setdefault(loop, []).append(future)
        for loop, futures in waiting.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: no one is waiting
                loop.call_soon_threadsafe(_resolve, futures, error)

    def _purge(self) -> None:
        if self._store is None:
            return
        try:
            self.stats.purged += self._store.purge_expired(datetime.now(UTC))
        except Exception as exc:
            log.warning("%s: the retention purge failed: %s", self._name, exc)

    @staticmethod
    def _close_quietly(store: LedgerStore) -> None:
        try:
            store.close()
        except Exception as exc:
            log.debug("closing a ledger connection: %s", exc)


def _refused(error: Exception) -> bool:
    """Whether the database refused the data itself (DB-API DataError or IntegrityError, or the driver
    could not convert a value), rather than failing to write at all (unreachable, locked, disk full)."""
    if isinstance(error, ValueError | TypeError | ArithmeticError):
        return True
    return any(cls.__name__ in ("DataError", "IntegrityError") for cls in type(error).__mro__)


def _resolve(futures: list[asyncio.Future[None]], error: LedgerError | None) -> None:
    for future in futures:
        if future.done():  # cancelled by its waiter
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
