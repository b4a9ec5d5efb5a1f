"""The ledger's storage interface, and the SQL that SQLite and PostgreSQL share.

    LedgerError
    ├── LedgerUnavailable   a batch could not be committed (the database is unreachable, full, ...)
    ├── LedgerClosed        a record was given after close()
    └── SchemaError         the database was written by a newer loragate, or the URL is wrong

Both stores run the same statements; only the column types, the parameter style and the way a
time or a JSON value crosses the driver differ (``SqlStore``'s hooks). A store object holds one
connection and is used by one thread at a time: the ledger's writer thread owns one, and reports
open another.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from .records import GROUP_COLUMNS, AuditEntry, AuditQuery, ReportQuery, ReportRow, UsageRecord

SCHEMA_VERSION = 1

USAGE_COLUMNS = (
    "time", "request_id", "tenant", "department", "key_id", "route", "model", "adapter", "template",
    "engine", "replica", "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms", "status",
    "error_type", "prompt_text", "completion_text", "retention_days", "text_expires",
)  # fmt: skip
AUDIT_COLUMNS = ("time", "actor", "action", "target", "before_json", "after_json")

INSERT_USAGE = (
    f"INSERT INTO usage_records ({', '.join(USAGE_COLUMNS)}) VALUES ({', '.join('?' * len(USAGE_COLUMNS))})"
)
INSERT_AUDIT = (
    f"INSERT INTO audit_log ({', '.join(AUDIT_COLUMNS)}) VALUES ({', '.join('?' * len(AUDIT_COLUMNS))})"
)
PURGE_TEXT = (
    "UPDATE usage_records SET prompt_text = NULL, completion_text = NULL, text_expires = NULL"
    " WHERE text_expires IS NOT NULL AND text_expires <= ?"
)
ERROR = "status >= 400 OR error_type IS NOT NULL"


def clean(text: str | None) -> str | None:
    """Text either database stores: NUL (PostgreSQL refuses it) and lone surrogates (not UTF-8) replaced.

    A client can put either into a model name or a prompt; one such record must not fail its batch.
    """
    if text is None or (text.isascii() and "\x00" not in text):
        return text
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def clean_json(value: Any) -> Any:
    """``value`` with every string in it (keys too) passed through ``clean``."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def report_sql(columns: Sequence[str], bounded: bool) -> str:
    """One pass: window functions rank each group's latencies, so the median is exact on both databases.

    ``columns`` come from ``GROUP_COLUMNS`` only (never from a client).
    """
    assert all(column in USAGE_COLUMNS for column in columns)
    group = ", ".join(columns)
    until = " AND time < ?" if bounded else ""
    return (
        f"SELECT {group}, COUNT(*), SUM(CASE WHEN {ERROR} THEN 1 ELSE 0 END),"
        " SUM(prompt_tokens), SUM(completion_tokens),"
        " AVG(CASE WHEN rn = (n + 1) / 2 OR rn = (n + 2) / 2 THEN latency_ms END), AVG(latency_ms)"
        f" FROM (SELECT {group}, status, error_type, prompt_tokens, completion_tokens, latency_ms,"
        f" ROW_NUMBER() OVER (PARTITION BY {group} ORDER BY latency_ms) AS rn,"
        f" COUNT(*) OVER (PARTITION BY {group}) AS n"
        f" FROM usage_records WHERE time >= ?{until}) AS ranked"
        f" GROUP BY {group}"
    )


class LedgerError(Exception):
    """The ledger could not do what was asked."""


class LedgerUnavailable(LedgerError):
    """Not committed: the records stay in memory and are written once the database is back."""


class LedgerClosed(LedgerError):
    """The ledger was closed: nothing more is written."""


class SchemaError(LedgerError):
    """The database cannot be used by this version (or the URL names no supported database)."""


class LedgerStore(Protocol):
    """A ledger database: SQLite (one host) or PostgreSQL (several gateways)."""

    def write(self, usage: Sequence[UsageRecord], audit: Sequence[AuditEntry]) -> None:
        """Inserts both lists in one transaction: when it returns, they are committed."""

    def usage_report(self, query: ReportQuery) -> list[ReportRow]:
        """Rows sorted by group (``None`` first)."""

    def audit_log(self, query: AuditQuery) -> list[AuditEntry]:
        """Entries oldest first, at most ``query.limit``."""

    def purge_expired(self, now: datetime) -> int:
        """Clears the prompt and completion text of records whose retention ended by ``now``; their number."""

    def close(self) -> None: ...


class SqlStore(abc.ABC):
    """The statements both databases run; subclasses connect and convert values."""

    placeholder = "?"

    # -- the driver's hooks --------------------------------------------------------------------
    @abc.abstractmethod
    def _transaction(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> int:
        """Runs each statement over its parameter rows in one transaction; the rows changed."""

    @abc.abstractmethod
    def _query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    def _time(self, moment: datetime | None) -> Any: ...

    @abc.abstractmethod
    def _read_time(self, value: Any) -> datetime: ...

    @abc.abstractmethod
    def _json(self, value: Any) -> Any: ...

    @abc.abstractmethod
    def _read_json(self, value: Any) -> Any: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    # -- the interface ---------------------------------------------------------------------------
    def write(self, usage: Sequence[UsageRecord], audit: Sequence[AuditEntry]) -> None:
        statements: list[tuple[str, Sequence[Sequence[Any]]]] = []
        if usage:
            statements.append((self._sql(INSERT_USAGE), [self._usage_row(r) for r in usage]))
        if audit:
            statements.append((self._sql(INSERT_AUDIT), [self._audit_row(e) for e in audit]))
        if statements:
            self._transaction(statements)

    def usage_report(self, query: ReportQuery) -> list[ReportRow]:
        params: list[Any] = [self._time(query.since)]
        if query.until is not None:
            params.append(self._time(query.until))
        rows = self._query(self._sql(report_sql(GROUP_COLUMNS[query.by], query.until is not None)), params)
        width = len(GROUP_COLUMNS[query.by])
        report = [
            ReportRow(
                group=tuple(row[:width]),
                requests=int(row[width]),
                errors=int(row[width + 1]),
                prompt_tokens=int(row[width + 2]),
                completion_tokens=int(row[width + 3]),
                p50_latency_ms=float(row[width + 4]),
                avg_latency_ms=float(row[width + 5]),
            )
            for row in rows
        ]
        # NULLs sort first in SQLite and last in PostgreSQL: one order for both
        return sorted(report, key=lambda r: tuple((v is not None, v or "") for v in r.group))

    def audit_log(self, query: AuditQuery) -> list[AuditEntry]:
        where, params = [], []
        for clause, value in (
            ("time >= ?", self._time(query.since) if query.since else None),
            ("time < ?", self._time(query.until) if query.until else None),
            ("actor = ?", query.actor),
            ("action = ?", query.action),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_log"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY time, id LIMIT ?"
        rows = self._query(self._sql(sql), [*params, query.limit])
        return [
            AuditEntry(
                time=self._read_time(time),
                actor=actor,
                action=action,
                target=target,
                before=self._read_json(before),
                after=self._read_json(after),
            )
            for time, actor, action, target, before, after in rows
        ]

    def purge_expired(self, now: datetime) -> int:
        return self._transaction([(self._sql(PURGE_TEXT), [(self._time(now),)])])

    # -- rows ------------------------------------------------------------------------------------
    def _usage_row(self, r: UsageRecord) -> tuple[Any, ...]:
        return (
            self._time(r.time), clean(r.request_id), clean(r.tenant), clean(r.department),
            clean(r.key_id), r.route, clean(r.model), clean(r.adapter), clean(r.template),
            clean(r.engine), clean(r.replica), r.prompt_tokens, r.completion_tokens, r.latency_ms,
            r.ttft_ms, r.status, clean(r.error_type), clean(r.prompt_text), clean(r.completion_text),
            r.retention_days, self._time(r.text_expires),
        )  # fmt: skip

    def _audit_row(self, e: AuditEntry) -> tuple[Any, ...]:
        before, after = self._json(clean_json(e.before)), self._json(clean_json(e.after))
        return (self._time(e.time), clean(e.actor), clean(e.action), clean(e.target), before, after)
