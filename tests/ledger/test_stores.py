"""Both stores, the same assertions: reports, filters, audit log, retention, schema version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.ledger import (
    AuditEntry,
    AuditQuery,
    LedgerStore,
    ReportQuery,
    SchemaError,
    UsageRecord,
    open_store,
    usage_report,
)
from tests.ledger.conftest import rec, stored

DAY = datetime(2026, 12, 3, tzinfo=UTC)


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


@pytest.fixture
def usage(store: LedgerStore) -> LedgerStore:
    """Two tenants, three departments, two adapters, one key without department, errors, a late record."""
    store.write(
        [
            rec("a1", time=at(1), latency_ms=10.0),
            rec(
                "a2",
                time=at(2),
                latency_ms=30.0,
                prompt_tokens=5,
                completion_tokens=0,
                status=429,
                error_type="rate_limit_error",
            ),
            rec("a3", time=at(3), latency_ms=20.0),
            rec("a4", time=at(4), latency_ms=40.0, error_type="engine_error"),  # failed mid-stream
            rec("b1", time=at(1), department="it", key_id="k-it", adapter="acme-it@1", latency_ms=7.0),
            rec(
                "c1",
                time=at(2),
                tenant="globex",
                department=None,
                key_id=None,
                adapter="base",
                template="none",
                latency_ms=3.0,
                prompt_tokens=1,
                completion_tokens=1,
            ),
            rec("late", time=at(30), latency_ms=1000.0),  # the next day
        ],  # fmt: skip
        [],
    )
    return store


def test_report_by_department_counts_tokens_errors_and_exact_median(usage: LedgerStore) -> None:
    rows = usage_report(usage, ReportQuery(by="department", since=DAY, until=DAY + timedelta(days=1)))
    assert [r.group for r in rows] == [("acme", "it"), ("acme", "legal"), ("globex", None)]
    legal = rows[1]
    assert (legal.requests, legal.errors) == (4, 2)
    assert (legal.prompt_tokens, legal.completion_tokens) == (35, 60)
    assert legal.p50_latency_ms == pytest.approx(25.0)  # even count: the mean of 20 and 30
    assert legal.avg_latency_ms == pytest.approx(25.0)
    assert rows[0].p50_latency_ms == pytest.approx(7.0)


def test_report_odd_count_median_and_open_end(usage: LedgerStore) -> None:
    rows = usage_report(usage, ReportQuery(by="tenant", since=DAY))
    acme = rows[0]
    assert acme.group == ("acme",) and acme.requests == 6
    assert acme.p50_latency_ms == pytest.approx(25.0)  # 7 10 20 30 40 1000
    rows = usage_report(usage, ReportQuery(by="tenant", since=DAY, until=at(3)))  # until is exclusive
    assert [(r.group, r.requests, r.p50_latency_ms) for r in rows] == [
        (("acme",), 3, pytest.approx(10.0)),
        (("globex",), 1, pytest.approx(3.0)),
    ]


def test_report_by_adapter_and_key(usage: LedgerStore) -> None:
    query = ReportQuery(by="adapter", since=DAY, until=at(24))
    assert [(r.group, r.requests) for r in usage_report(usage, query)] == [
        (("acme-it@1",), 1),
        (("acme-legal@2",), 4),
        (("base",), 1),
    ]
    by_key = usage_report(usage, ReportQuery(by="key", since=at(2), until=at(24)))
    assert [(r.group, r.requests, r.errors) for r in by_key] == [
        (("acme", "k-legal"), 3, 2),
        (("globex", None), 1, 0),
    ]


def test_report_outside_any_record_is_empty(usage: LedgerStore) -> None:
    assert usage_report(usage, ReportQuery(by="tenant", since=DAY - timedelta(days=9), until=DAY)) == []


def test_audit_round_trip_and_filters(store: LedgerStore) -> None:
    entries = [
        AuditEntry(time=at(1), actor="admin-1", action="keys.create", target="k-9",
                   before=None, after={"tenant": "acme", "department": "legal"}),
        AuditEntry(time=at(2), actor="admin-2", action="adapters.promote", target="acme-it",
                   before={"version": 1}, after={"version": 2, "notes": ["é", "ok"]}),
        AuditEntry(time=at(3), actor="admin-1", action="keys.revoke", target="k-9",
                   before={"revoked": False}, after={"revoked": True}),
    ]  # fmt: skip
    store.write([], entries)
    assert store.audit_log(AuditQuery()) == entries
    assert store.audit_log(AuditQuery(actor="admin-1")) == [entries[0], entries[2]]
    assert store.audit_log(AuditQuery(action="adapters.promote")) == [entries[1]]
    assert store.audit_log(AuditQuery(since=at(2), until=at(3))) == [entries[1]]
    assert store.audit_log(AuditQuery(limit=2)) == entries[:2]


def test_purge_clears_expired_text_and_keeps_counts(ledger_url: str, store: LedgerStore) -> None:
    store.write(
        [
            rec("old", time=at(0), prompt_text="secret prompt", completion_text="answer", retention_days=7),
            rec("new", time=at(0) + timedelta(days=5), prompt_text="recent", retention_days=7),
            rec("none", time=at(0)),
        ],
        [],
    )
    assert store.purge_expired(at(0) + timedelta(days=7, seconds=1)) == 1
    rows = stored(ledger_url, "request_id, prompt_text, completion_text, prompt_tokens")
    assert rows == [("old", None, None, 10), ("new", "recent", None, 10), ("none", None, None, 10)]
    assert store.purge_expired(at(0) + timedelta(days=7, seconds=2)) == 0


def test_text_a_database_would_refuse_is_cleaned(ledger_url: str, store: LedgerStore) -> None:
    """NUL (PostgreSQL refuses it) and a lone surrogate (not UTF-8), as a client can send in JSON."""
    store.write([rec("odd", model="m\x00x\ud800", prompt_text="a\x00b", retention_days=1)], [])
    assert stored(ledger_url, "model, prompt_text") == [("m\ufffdx?", "a\ufffdb")]


def test_schema_is_created_once_and_a_newer_one_is_refused(ledger_url: str, store: LedgerStore) -> None:
    store.write([rec("kept")], [])
    again = open_store(ledger_url)  # the schema exists: opening again keeps the data
    again.close()
    assert stored(ledger_url) == [("kept",)]
    if ledger_url.startswith("sqlite:"):
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(ledger_url.removeprefix("sqlite:///"), isolation_level=None)) as db:
            db.execute("UPDATE ledger_schema SET version = 99")
    else:
        import psycopg

        with psycopg.connect(ledger_url) as db:
            db.execute(b"UPDATE ledger_schema SET version = 99")
    with pytest.raises(SchemaError, match="schema 99"):
        open_store(ledger_url)


def test_records_check_what_a_database_would_refuse() -> None:
    with pytest.raises(ValueError, match="naive"):
        rec(time=datetime(2026, 12, 1))
    with pytest.raises(ValueError, match="retention_days"):
        rec(prompt_text="kept forever?")
    with pytest.raises(ValueError, match="latency_ms"):
        rec(latency_ms=float("nan"))
    with pytest.raises(ValueError, match="HTTP status"):
        rec(status=70000)
    local = datetime(2026, 12, 1, 10, tzinfo=UTC).astimezone()  # any zone: stored in UTC
    assert isinstance(rec(time=local), UsageRecord) and rec(time=local).time.tzinfo is UTC


def test_unsupported_urls_are_refused(tmp_path: object) -> None:
    with pytest.raises(SchemaError, match="unsupported"):
        open_store("mysql://x@localhost/db")
    with pytest.raises(SchemaError, match="needs a file"):
        open_store("sqlite:///:memory:")
    with pytest.raises(SchemaError, match="synchronous"):
        open_store(f"sqlite:///{tmp_path}/x.db?synchronous=OFF")
