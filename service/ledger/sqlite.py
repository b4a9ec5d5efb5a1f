"""The ledger in one SQLite file: WAL mode, ``synchronous=NORMAL``, the schema created on open.

``sqlite:///data/usage.db`` is relative to the working directory, ``sqlite:////var/lib/x.db``
absolute. ``?synchronous=FULL`` makes every commit survive a power cut too (an fsync per
commit); NORMAL survives a killed process, which is what the gateway's handshake promises.
Times are stored as fixed-width UTC text (``2026-12-01 09:30:00.000000``), so that they sort
and compare as text; JSON as text.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .store import SCHEMA_VERSION, LedgerUnavailable, SchemaError, SqlStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS usage_records (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    request_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    department TEXT,
    key_id TEXT,
    route TEXT NOT NULL,
    model TEXT NOT NULL,
    adapter TEXT NOT NULL,
    template TEXT NOT NULL,
    engine TEXT NOT NULL,
    replica TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    ttft_ms REAL,
    status INTEGER NOT NULL,
    error_type TEXT,
    prompt_text TEXT,
    completion_text TEXT,
    retention_days INTEGER,
    text_expires TEXT
);
CREATE INDEX IF NOT EXISTS usage_records_time ON usage_records (time);
CREATE INDEX IF NOT EXISTS usage_records_request_id ON usage_records (request_id);
CREATE INDEX IF NOT EXISTS usage_records_text_expires ON usage_records (text_expires)
    WHERE text_expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before_json TEXT,
    after_json TEXT
);
CREATE INDEX IF NOT EXISTS audit_log_time ON audit_log (time);
"""
TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def sqlite_path(url: str) -> tuple[Path, str]:
    """The file and the ``synchronous`` level a ``sqlite:///...`` URL names."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/") or len(parts.path) < 2:
        raise SchemaError(f"not a SQLite ledger URL: {url!r} (sqlite:///relative.db or sqlite:////abs.db)")
    synchronous = parse_qs(parts.query).get("synchronous", ["NORMAL"])[-1].upper()
    if synchronous not in ("NORMAL", "FULL"):
        raise SchemaError(f"synchronous={synchronous} in {url!r}: NORMAL or FULL")
    path = parts.path[1:]
    if path == ":memory:":
        raise SchemaError("the ledger needs a file: the writer and the reports use separate connections")
    return Path(path), synchronous


class SqliteStore(SqlStore):
    def __init__(self, path: Path, synchronous: str = "NORMAL") -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode: every transaction is an explicit BEGIN IMMEDIATE ... COMMIT. The store is
            # used by one thread at a time, not always the one that opened it (reports run in a pool).
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerUnavailable(f"cannot open the ledger {path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._create_schema()
        except sqlite3.Error as exc:
            self._db.close()
            raise LedgerUnavailable(f"cannot open the ledger {path}: {exc}") from exc
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        path, synchronous = sqlite_path(url)
        return cls(path, synchronous)

    def _create_schema(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            row = self._db.execute("SELECT MAX(version) FROM ledger_schema").fetchone()
            if row[0] is None:
                self._db.execute("INSERT INTO ledger_schema (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise SchemaError(
                    f"{self.path} has ledger schema {row[0]}; this loragate knows {SCHEMA_VERSION}:"
                    " it was written by a newer version"
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _transaction(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> int:
        changed = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in statements:
                changed += self._db.executemany(sql, rows).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return changed

    def _query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise LedgerUnavailable(f"reading the ledger {self.path}: {exc}") from exc

    def _time(self, moment: datetime | None) -> Any:
        return None if moment is None else moment.astimezone(UTC).strftime(TIME_FORMAT)

    def _read_time(self, value: Any) -> datetime:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)

    def _json(self, value: Any) -> Any:
        return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)

    def _read_json(self, value: Any) -> Any:
        return None if value is None else json.loads(value)

    def close(self) -> None:
        self._db.close()
