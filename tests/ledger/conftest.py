"""Ledger fixtures: SQLite files, and a real PostgreSQL server started once per session.

PostgreSQL comes from Debian's postgresql package (initdb, pg_ctl, postgres under
/usr/lib/postgresql/*/bin). Without it the PostgreSQL cases are skipped on a workstation and
fail under CI, where .ci/run installs it.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from typing import Any

import pytest

from service.ledger import LedgerStore, UsageRecord, open_store
from tests.ledger.pg import PostgresServer, find_bin_dir

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bin_dir = find_bin_dir()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        bin_dir, reason = None, "psycopg is not installed (pip install 'psycopg[binary]')"
    else:
        reason = "PostgreSQL server binaries not found: apt-get install postgresql"
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = PostgresServer(bin_dir, fsync=False)
    try:
        server.start()
    except Exception as exc:
        pytest.fail(f"PostgreSQL did not start: {exc}\n{getattr(exc, 'stderr', '')}\n{server.log_tail()}")
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """An empty ledger database: a fresh SQLite file, or a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'usage.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"ledger_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def store(ledger_url: str) -> Iterator[LedgerStore]:
    store = open_store(ledger_url)
    yield store
    store.close()


def rec(request_id: str = "r1", **fields: Any) -> UsageRecord:
    """A usage record with plausible defaults; ``fields`` override them."""
    values: dict[str, Any] = {
        "time": datetime(2026, 12, 3, 12, 0, tzinfo=UTC),
        "request_id": request_id,
        "tenant": "acme",
        "department": "legal",
        "key_id": "k-legal",
        "route": "chat",
        "model": "SmolLM2-135M-Instruct",
        "adapter": "acme-legal@2",
        "template": "legal@1",
        "engine": "local",
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "latency_ms": 100.0,
    }
    return UsageRecord(**(values | fields))


def stored(url: str, columns: str = "request_id") -> list[tuple[Any, ...]]:
    """Rows of usage_records read through a connection of its own (not the ledger's), by id."""
    sql = f"SELECT {columns} FROM usage_records ORDER BY id"
    if url.startswith("sqlite:"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            return db.execute(sql).fetchall()
    import psycopg

    with psycopg.connect(url) as db:
        return db.execute(sql.encode()).fetchall()


def stored_ids(url: str) -> list[str]:
    return [row[0] for row in stored(url)]
