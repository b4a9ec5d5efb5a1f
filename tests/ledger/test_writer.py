"""The writer: a record's future resolves only once it is committed; batches; failures; close."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.ledger import (
    AuditEntry,
    AuditQuery,
    Ledger,
    LedgerClosed,
    LedgerError,
    LedgerStore,
    LedgerUnavailable,
    ReportQuery,
    SchemaError,
    UsageRecord,
    open_ledger,
    open_store,
)
from tests.ledger.conftest import rec, stored, stored_ids


class ScriptedStore:
    """A real store whose writes can be held at a gate, fail as if the disk were gone, or refuse a record."""

    def __init__(self, inner: LedgerStore, script: Script) -> None:
        self.inner, self.script = inner, script

    def write(self, usage: Sequence[UsageRecord], audit: Sequence[AuditEntry]) -> None:
        assert self.script.gate.wait(10)
        if self.script.broken:
            raise sqlite3.OperationalError("disk I/O error")
        if any(r.request_id == "poison" for r in usage):
            raise sqlite3.IntegrityError("refused")
        self.inner.write(usage, audit)
        self.script.batches.append(len(usage) + len(audit))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Script:
    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.broken = False
        self.batches: list[int] = []


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def ledger(ledger_url: str, script: Script) -> Iterator[Ledger]:
    ledger = Ledger(lambda: ScriptedStore(open_store(ledger_url), script), batch_seconds=0.005).start()
    yield ledger
    script.gate.set()
    script.broken = False
    ledger.close()


async def test_future_resolves_only_after_commit(ledger: Ledger, ledger_url: str, script: Script) -> None:
    script.gate.clear()  # the commit is held
    committed = ledger.record(rec("held"))
    await asyncio.sleep(0.1)
    assert not committed.done()
    assert stored_ids(ledger_url) == []
    script.gate.set()
    await asyncio.wait_for(committed, 5)
    assert stored_ids(ledger_url) == ["held"]  # read through another connection


async def test_concurrent_records_share_commits(ledger: Ledger, ledger_url: str, script: Script) -> None:
    async def request(n: int) -> None:
        await asyncio.sleep(0)
        await ledger.record(rec(f"r{n}"))

    await asyncio.gather(*(request(n) for n in range(300)))
    assert sorted(stored_ids(ledger_url)) == sorted(f"r{n}" for n in range(300))
    assert sum(script.batches) == 300 and len(script.batches) < 300


async def test_idle_record_is_committed_without_waiting_for_a_batch(ledger_url: str) -> None:
    ledger = open_ledger(ledger_url, batch_seconds=5.0)  # a batch period far longer than the test
    try:
        started = time.perf_counter()
        await asyncio.wait_for(ledger.record(rec("alone")), 4)
        assert time.perf_counter() - started < 2.0
    finally:
        ledger.close()


async def test_audit_entries_and_reports_go_through_the_ledger(ledger: Ledger) -> None:
    entry = AuditEntry(time=datetime.now(UTC), actor="admin-1", action="keys.revoke", target="k-1",
                       before={"revoked": False}, after={"revoked": True})  # fmt: skip
    await ledger.audit(entry)
    await ledger.record(rec("r1"))
    assert ledger.audit_log(AuditQuery(actor="admin-1")) == [entry]
    rows = ledger.usage_report(ReportQuery(by="tenant", since=datetime(2026, 12, 1, tzinfo=UTC)))
    assert [(r.group, r.requests) for r in rows] == [(("acme",), 1)]


async def test_unreachable_database_fails_the_future_and_keeps_the_record(
    ledger: Ledger, ledger_url: str, script: Script
) -> None:
    script.broken = True
    with pytest.raises(LedgerUnavailable):
        await asyncio.wait_for(ledger.record(rec("during-outage")), 5)
    ledger.record_nowait(rec("also-during"))
    await until(lambda: ledger.stats.backlog == 2)
    assert ledger.stats.failed_batches >= 1
    script.broken = False  # the writer retries by itself (after 0.2 s, then 0.4 s...)
    await until(lambda: ledger.stats.backlog == 0)
    assert sorted(stored_ids(ledger_url)) == ["also-during", "during-outage"]
    await asyncio.wait_for(ledger.record(rec("after")), 5)
    assert ledger.stats.backlog == 0 and len(stored_ids(ledger_url)) == 3


async def test_a_refused_record_is_dropped_alone(ledger: Ledger, ledger_url: str) -> None:
    results = await asyncio.gather(
        ledger.record(rec("good-1")),
        ledger.record(rec("poison")),
        ledger.record(rec("good-2")),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], LedgerError) and not isinstance(results[1], LedgerUnavailable)
    assert sorted(stored_ids(ledger_url)) == ["good-1", "good-2"]
    assert ledger.stats.dropped == 1


async def test_close_writes_everything_queued(ledger_url: str) -> None:
    ledger = open_ledger(ledger_url)
    for n in range(500):
        ledger.record_nowait(rec(f"q{n}"))
    await ledger.aclose()
    assert len(stored_ids(ledger_url)) == 500
    with pytest.raises(LedgerClosed):
        ledger.record(rec("late"))
    with pytest.raises(LedgerClosed):
        ledger.record_nowait(rec("late"))


def test_the_writer_purges_expired_text_when_it_starts(ledger_url: str) -> None:
    old = datetime.now(UTC) - timedelta(days=40)
    store = open_store(ledger_url)
    store.write([rec("old", time=old, prompt_text="p", retention_days=30)], [])
    store.close()
    ledger = open_ledger(ledger_url)
    ledger.close()
    assert stored(ledger_url, "prompt_text") == [(None,)]
    assert ledger.stats.purged == 1


def test_a_ledger_that_cannot_open_fails_the_start(postgres: Any) -> None:
    with pytest.raises(LedgerUnavailable):
        open_ledger(postgres.url("no_such_database"))
    with pytest.raises(SchemaError):
        open_ledger("redis://127.0.0.1/0")
