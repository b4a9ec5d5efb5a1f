"""The shared state's tables in PostgreSQL: API keys (hashes only), versions of the tenants document,
and the adapter registry's aliases.

psycopg 3, in the ledger's style (``service/ledger/postgres.py``): plain SQL, one connection per
use, the schema created under an advisory lock so that gateways starting together create it once.
Every call blocks: the gateway calls it from worker threads (``asyncio.to_thread``, the watcher's
thread), never on the event loop.

Change numbers
--------------
Each write takes ``pg_advisory_xact_lock(WRITE_LOCK)`` first and holds it until its commit, then
numbers the rows it writes from the sequence ``state_changes``. Writes are rare (an admin's), so
serialising them costs nothing, and it makes numbers commit in order: a reader that has seen
change N has seen every change below N, so ``keys_since(N)`` never skips a row that committed late.
Each write also sends ``NOTIFY loragate_state`` (delivered at commit) to wake the watchers.

Tenants are one YAML document, stored whole as numbered versions (``tenant_documents``): the
document is validated as a whole (a default department must be one of the tenant's, an alias may
not be the base model's name...), so storing it whole keeps one parser and one validation, makes a
replacement atomic, and keeps every earlier version for the record and for going back.

The registry's aliases (alias -> current version and history) are one JSON document too, one row
(``adapter_aliases``), changed under the same write lock: concurrent promotes all land.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import EngineUnavailableError
from ..keys import KeyRecord
from ..ledger import redacted
from ..ledger.postgres import CONNECTION_DEFAULTS
from ..limits.policy import Limits
from ..registry_store import AliasChange, Aliases

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS state_schema (version INTEGER NOT NULL);
CREATE SEQUENCE IF NOT EXISTS state_changes;
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    sha256 CHAR(64) NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    department TEXT,
    created TEXT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT FALSE,
    limits JSONB,
    change BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_change ON api_keys (change);
CREATE TABLE IF NOT EXISTS tenant_documents (
    version BIGINT PRIMARY KEY,
    yaml TEXT NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS adapter_aliases (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    document JSONB NOT NULL,
    change BIGINT NOT NULL
)
"""
SCHEMA_LOCK = 0x6C677374  # "lgst": held while the schema is created
WRITE_LOCK = 0x6C677377  # "lgsw": held by every write until its commit (see the module doc)
CHANNEL = "loragate_state"
KEY_COLUMNS = "sha256, id, tenant, department, created, revoked, limits, change"

KeyRow = tuple[str, KeyRecord, int]  # (sha256, record, change number)


class StateUnavailable(EngineUnavailableError):
    """The shared state database cannot be reached or used (503; the message names it, no password)."""

    default_code = "state_unavailable"


class StateSchemaError(ValueError):
    """The database holds a newer schema than this loragate knows."""


@dataclass(frozen=True)
class TenantsDocument:
    version: int
    yaml: str
    actor: str


def connect(url: str, application: str = "loragate-state") -> psycopg.Connection[tuple[Any, ...]]:
    """A connection in autocommit mode (every transaction is an explicit ``transaction()``)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(url.replace("postgresql+psycopg://", "postgresql://", 1))
        for name, value in (CONNECTION_DEFAULTS | {"application_name": application}).items():
            params.setdefault(name, value)
        params.setdefault("connect_timeout", 10)
        return psycopg.connect(make_conninfo("", **params), autocommit=True)
    except psycopg.Error as exc:
        raise StateUnavailable(f"cannot connect to the state database {redacted(url)}: {exc}") from None


class StateDatabase:
    """One connection, shared under a lock by the worker threads that use it; reconnects after an error."""

    def __init__(self, url: str):
        self.url = url
        self._lock = threading.Lock()
        self._db: psycopg.Connection[tuple[Any, ...]] | None = None
        with self._cursor(transaction=True) as cur:
            _create_schema(cur)

    @property
    def name(self) -> str:
        return redacted(self.url)

    @contextmanager
    def _cursor(self, *, transaction: bool = False) -> Iterator[psycopg.Cursor[tuple[Any, ...]]]:
        import psycopg

        with self._lock:
            try:
                if self._db is None or self._db.closed:
                    self._db = connect(self.url)
                if transaction:
                    with self._db.transaction(), self._db.cursor() as cur:
                        yield cur
                else:
                    with self._db.cursor() as cur:
                        yield cur
            except psycopg.OperationalError as exc:
                self._drop()
                raise StateUnavailable(f"the state database {self.name} failed: {exc}") from None

    def _drop(self) -> None:
        if self._db is not None:
            self._db.close()
        self._db = None

    @contextmanager
    def _write(self) -> Iterator[psycopg.Cursor[tuple[Any, ...]]]:
        """A write transaction: serialised with every other write, watchers notified at commit."""
        with self._cursor(transaction=True) as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            yield cur
            cur.execute(f"NOTIFY {CHANNEL}".encode())

    # -- keys ------------------------------------------------------------------------------------
    def insert_key(self, digest: str, record: KeyRecord) -> bool:
        """Adds a key; False when its id or hash is taken already (nothing written)."""
        with self._write() as cur:
            cur.execute(
                "INSERT INTO api_keys (sha256, id, tenant, department, created, revoked, limits, change)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, nextval('state_changes')) ON CONFLICT DO NOTHING",
                (digest, *_key_values(record)),
            )
            return cur.rowcount == 1

    def import_keys(self, rows: Sequence[tuple[str, KeyRecord]]) -> int:
        """Adds ``(sha256, record)`` pairs in one transaction, skipping ids or hashes taken; returns how many
        are new."""
        with self._write() as cur:
            count = "SELECT COUNT(*) FROM api_keys"
            before = cur.execute(count).fetchone()
            cur.executemany(
                "INSERT INTO api_keys (sha256, id, tenant, department, created, revoked, limits, change)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, nextval('state_changes')) ON CONFLICT DO NOTHING",
                [(digest, *_key_values(record)) for digest, record in rows],
            )
            after = cur.execute(count).fetchone()
        assert before is not None and after is not None
        return int(after[0]) - int(before[0])

    def revoke_key(self, key_id: str) -> KeyRecord | None:
        """Marks a key revoked (a new change only if it was active); None when there is no such id."""
        with self._write() as cur:
            cur.execute(
                "UPDATE api_keys SET revoked = TRUE, change = nextval('state_changes')"
                " WHERE id = %s AND NOT revoked",
                (key_id,),
            )
            row = cur.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = %s", (key_id,)).fetchone()
        return None if row is None else _key_row(row)[1]

    def key_by_hash(self, digest: str) -> KeyRecord | None:
        with self._cursor() as cur:
            row = cur.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE sha256 = %s", (digest,)).fetchone()
        return None if row is None else _key_row(row)[1]

    def keys_since(self, change: int) -> list[KeyRow]:
        """Keys written after change number ``change`` (0: all of them), in the order they were written."""
        with self._cursor() as cur:
            rows = cur.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE change > %s ORDER BY change", (change,)
            ).fetchall()
        return [_key_row(row) for row in rows]

    def all_keys(self) -> list[KeyRecord]:
        return [record for _, record, _ in self.keys_since(0)]

    # -- the tenants document --------------------------------------------------------------------
    def add_tenants(self, text: str, actor: str) -> int:
        """Stores ``text`` (validated by the caller) as the next version; returns its number."""
        with self._write() as cur:
            row = cur.execute(
                "INSERT INTO tenant_documents (version, yaml, actor)"
                " SELECT COALESCE(MAX(version), 0) + 1, %s, %s FROM tenant_documents RETURNING version",
                (text, actor),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def tenants(self, newer_than: int = 0) -> TenantsDocument | None:
        """The latest version of the tenants document if it is newer than ``newer_than``, else None."""
        with self._cursor() as cur:
            row = cur.execute(
                "SELECT version, yaml, actor FROM tenant_documents WHERE version > %s"
                " ORDER BY version DESC LIMIT 1",
                (newer_than,),
            ).fetchone()
        return None if row is None else TenantsDocument(int(row[0]), str(row[1]), str(row[2]))

    # -- the adapter aliases (service/shared_state/aliases.py) -----------------------------------
    def aliases(self) -> Aliases | None:
        """The registry's aliases as the database holds them; None before the first promote."""
        with self._cursor() as cur:
            row = cur.execute("SELECT document FROM adapter_aliases WHERE id = 1").fetchone()
        return None if row is None else dict(row[0])

    def update_aliases(self, change: AliasChange, seed: Callable[[], Aliases]) -> Aliases:
        """Applies ``change`` under the write lock (so concurrent promotes all land); the first update
        starts from ``seed()``, the aliases the registry's own store held until then."""
        from psycopg.types.json import Jsonb

        with self._write() as cur:
            row = cur.execute("SELECT document FROM adapter_aliases WHERE id = 1").fetchone()
            aliases = change(dict(row[0]) if row is not None else seed())
            cur.execute(
                "INSERT INTO adapter_aliases (id, document, change) VALUES (1, %s, nextval('state_changes'))"
                " ON CONFLICT (id) DO UPDATE SET document = EXCLUDED.document, change = EXCLUDED.change",
                (Jsonb(aliases),),
            )
        return aliases

    def close(self) -> None:
        with self._lock:
            self._drop()


def _create_schema(cur: psycopg.Cursor[tuple[Any, ...]]) -> None:
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
    for statement in SCHEMA.split(";"):
        if statement.strip():
            cur.execute(statement.encode())
    row = cur.execute("SELECT MAX(version) FROM state_schema").fetchone()
    if row is None or row[0] is None:
        cur.execute("INSERT INTO state_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
    elif row[0] > SCHEMA_VERSION:
        raise StateSchemaError(
            f"the state database has schema {row[0]}; this loragate knows {SCHEMA_VERSION}:"
            " it was written by a newer version"
        )


def _key_values(record: KeyRecord) -> Sequence[Any]:
    from psycopg.types.json import Jsonb

    limits = Jsonb(record.limits.to_dict()) if record.limits else None
    return (record.key_id, record.tenant, record.department, record.created, record.revoked, limits)


def _key_row(row: Sequence[Any]) -> KeyRow:
    digest, key_id, tenant, department, created, revoked, limits, change = row
    limited = Limits.parse(limits)
    record = KeyRecord(str(key_id), str(tenant), department, str(created), bool(revoked), limited)
    return str(digest), record, int(change)
