"""The ledger in PostgreSQL, for deployments where several gateways write one ledger.

psycopg 3, no SQLAlchemy: the ledger runs five statements, written once for both databases
(``store.SqlStore``); psycopg's ``executemany`` sends a batch in one round trip (pipeline mode),
and an ORM or a query compiler would add a dependency and per-row work for nothing. Times are
``timestamptz``, audit states ``jsonb``. Gateways that start together create the schema under an
advisory lock, so that one creates it and the others find it.

psycopg is imported only when a ``postgresql://`` URL is opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .store import SCHEMA_VERSION, LedgerUnavailable, SchemaError, SqlStore

if TYPE_CHECKING:
    import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS usage_records (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time TIMESTAMPTZ NOT NULL,
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
    latency_ms DOUBLE PRECISION NOT NULL,
    ttft_ms DOUBLE PRECISION,
    status SMALLINT NOT NULL,
    error_type TEXT,
    prompt_text TEXT,
    completion_text TEXT,
    retention_days INTEGER,
    text_expires TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS usage_records_time ON usage_records (time);
CREATE INDEX IF NOT EXISTS usage_records_request_id ON usage_records (request_id);
CREATE INDEX IF NOT EXISTS usage_records_text_expires ON usage_records (text_expires)
    WHERE text_expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit_log (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time TIMESTAMPTZ NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before_json JSONB,
    after_json JSONB
);
CREATE INDEX IF NOT EXISTS audit_log_time ON audit_log (time);
"""
# Unless the URL says otherwise: a write stuck on a dead network fails within seconds (the writer then
# keeps the records and reconnects) instead of holding every answer that waits for it.
CONNECTION_DEFAULTS: dict[str, Any] = {
    "application_name": "loragate-ledger",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,  # ms
}
SCHEMA_LOCK = 0x6C6F7261  # "lora": pg_advisory_xact_lock's key while the schema is created


class PostgresStore(SqlStore):
    placeholder = "%s"

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict, make_conninfo
            from psycopg.types.json import Jsonb
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise SchemaError("a postgresql:// ledger needs psycopg: pip install 'psycopg[binary]'") from exc
        self._jsonb = Jsonb
        self._errors = psycopg.Error
        try:
            params = conninfo_to_dict(url.replace("postgresql+psycopg://", "postgresql://", 1))
            for name, value in CONNECTION_DEFAULTS.items():
                params.setdefault(name, value)
            params.setdefault("connect_timeout", max(1, round(connect_timeout)))
            # every transaction is an explicit `with transaction()`
            self._db: psycopg.Connection[tuple[Any, ...]] = psycopg.connect(
                make_conninfo("", **params), autocommit=True
            )
        except psycopg.Error as exc:
            raise LedgerUnavailable(f"cannot connect to the PostgreSQL ledger: {exc}") from exc
        try:
            self._create_schema()
        except psycopg.Error as exc:
            self._db.close()
            raise LedgerUnavailable(f"cannot create the ledger's schema: {exc}") from exc
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        return cls(url)

    def _create_schema(self) -> None:
        with self._db.transaction(), self._db.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    cur.execute(statement.encode())
            row = cur.execute("SELECT MAX(version) FROM ledger_schema").fetchone()
            if row is None or row[0] is None:
                cur.execute("INSERT INTO ledger_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise SchemaError(
                    f"the PostgreSQL ledger has schema {row[0]}; this loragate knows {SCHEMA_VERSION}:"
                    " it was written by a newer version"
                )

    def _transaction(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> int:
        changed = 0
        with self._db.transaction(), self._db.cursor() as cur:
            for sql, rows in statements:
                cur.executemany(sql.encode(), rows)
                changed += max(cur.rowcount, 0)
        return changed

    def _query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            with self._db.cursor() as cur:
                return cur.execute(sql.encode(), params).fetchall()
        except self._errors as exc:
            raise LedgerUnavailable(f"reading the PostgreSQL ledger: {exc}") from exc

    def _time(self, moment: datetime | None) -> Any:
        return moment

    def _read_time(self, value: Any) -> datetime:
        assert isinstance(value, datetime)
        return value.astimezone(UTC)

    def _json(self, value: Any) -> Any:
        return None if value is None else self._jsonb(value)

    def _read_json(self, value: Any) -> Any:
        return value  # psycopg decodes jsonb

    def close(self) -> None:
        self._db.close()
