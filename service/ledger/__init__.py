"""The usage ledger (one record per request, for chargeback) and the admin audit log, in one database.

    ledger = open_ledger(settings.ledger_url, batch_seconds=settings.ledger_batch_seconds)
    committed = ledger.record(UsageRecord(...))   # on the event loop: queued, not yet written
    await committed                               # before the answer's last bytes: it is in the database
    ledger.close()                                # at shutdown: writes what is queued

``sqlite:///PATH`` (the default, one host) or ``postgresql://...`` (several gateways); see
docs/usage-ledger.md. ``open_store(url)`` opens the database without a writer thread, for the
``loragate usage`` command and tests.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from urllib.parse import urlsplit, urlunsplit

from .postgres import PostgresStore
from .records import (
    GROUP_COLUMNS,
    AuditEntry,
    AuditQuery,
    Grouping,
    ReportQuery,
    ReportRow,
    Route,
    UsageRecord,
)
from .report import usage_report
from .sqlite import SqliteStore
from .store import LedgerClosed, LedgerError, LedgerStore, LedgerUnavailable, SchemaError
from .writer import Ledger, LedgerStats

__all__ = [
    "GROUP_COLUMNS",
    "AuditEntry",
    "AuditQuery",
    "Grouping",
    "Ledger",
    "LedgerClosed",
    "LedgerError",
    "LedgerStats",
    "LedgerStore",
    "LedgerUnavailable",
    "ReportQuery",
    "ReportRow",
    "Route",
    "SchemaError",
    "UsageRecord",
    "open_ledger",
    "open_store",
    "redacted",
    "usage_report",
]

STORES: dict[str, Callable[[str], LedgerStore]] = {
    "sqlite": SqliteStore.from_url,
    "postgresql": PostgresStore.from_url,
    "postgres": PostgresStore.from_url,
    "postgresql+psycopg": PostgresStore.from_url,
}


def open_store(url: str) -> LedgerStore:
    """The ledger database at ``url``, its schema created if missing; one connection, no writer thread."""
    scheme = urlsplit(url).scheme
    if scheme not in STORES:
        raise SchemaError(f"unsupported ledger URL {redacted(url)!r}: sqlite:///PATH or postgresql://...")
    return STORES[scheme](url)


def open_ledger(url: str, *, batch_seconds: float = 0.001, purge_every: float = 3600.0) -> Ledger:
    """Opens the database (raising if it cannot: a wrong URL fails the start, not the first request)
    and starts the writer thread. Blocks for the connection: call it through ``asyncio.to_thread``
    in an async start-up."""
    return Ledger(
        partial(open_store, url),
        batch_seconds=batch_seconds,
        purge_every=purge_every,
        name=f"ledger at {redacted(url)}",
    ).start()


def redacted(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
