"""API keys in the shared database: a copy of the active keys in memory, kept current by the watcher.

The hot path (``lookup``, every request) is what the keys file's is: the key's SHA-256 and one dict
look-up, no database round trip. The copy is replaced whole on each change (a reader never sees it
half-updated) and holds hashes and records only, never a key.

- A key created on another gateway is in the copy once the watcher hears of it (milliseconds).
  Before that, ``find`` (the async path) asks the database by hash in a worker thread, so the key
  works on the first request anywhere. A hash the database did not know is remembered until the
  next key change, so a caller repeating a wrong key costs one query, not one per request; at most
  ``MISS_QUERIES`` such queries run at a time.
- A key revoked on any gateway stops working on every gateway when the watcher hears of it:
  milliseconds normally, at most ``POLL_SECONDS`` (2 s) if the notification is lost. While the
  database is out of reach, the keys known last stay in force (see ``watcher.py``).
"""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType

from ..errors import NotFoundError
from ..keys import KeyRecord, Scopes, key_digest, new_key, new_key_id, utc_now
from ..limits.policy import Limits
from .database import StateDatabase

MISS_QUERIES = 2  # database look-ups of unknown keys at once, per gateway
MAX_MISSES = 10_000  # unknown hashes remembered; forgotten all at once beyond


class SharedKeyStore:
    """The keys of ``state_url``: a :class:`service.keys.KeyDirectory`."""

    def __init__(self, db: StateDatabase, tenants: Scopes, on_close: Callable[[], None] = lambda: None):
        self.db = db
        self.tenants = tenants
        self._on_close = on_close
        self._active: Mapping[str, KeyRecord] = MappingProxyType({})
        self._change = 0  # the last change number the copy holds
        self._misses: set[str] = set()  # hashes the database did not know, since the last key change
        self._refreshing = threading.Lock()
        self._queries: asyncio.Semaphore | None = None
        self.refresh()

    @property
    def source(self) -> str:
        return f"the state database {self.db.name}"

    # -- the hot path -----------------------------------------------------------------------------
    def lookup(self, key: str) -> KeyRecord | None:
        """The record of an active key this gateway knows of, or None: one hash, one dict look-up."""
        return self._active.get(key_digest(key))

    async def find(self, key: str) -> KeyRecord | None:
        """``lookup``, then the database for a key not heard of yet (another gateway's, just made)."""
        digest = key_digest(key)
        record = self._active.get(digest)
        if record is not None or digest in self._misses:
            return record
        if self._queries is None:
            self._queries = asyncio.Semaphore(MISS_QUERIES)
        async with self._queries:
            return await asyncio.to_thread(self._ask, digest)

    def _ask(self, digest: str) -> KeyRecord | None:
        record = self.db.key_by_hash(digest)
        if record is not None and not record.revoked:
            return record
        if len(self._misses) >= MAX_MISSES:
            self._misses = set()
        self._misses.add(digest)
        return None

    # -- the copy ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Apply the keys written since the last refresh (the watcher's thread, or after our own write)."""
        with self._refreshing:
            rows = self.db.keys_since(self._change)
            if not rows:
                return
            active = dict(self._active)
            for digest, record, _ in rows:
                if record.revoked:
                    active.pop(digest, None)
                else:
                    active[digest] = record
            self._active = MappingProxyType(active)
            self._misses = set()  # a hash unknown before may be a key now
            self._change = rows[-1][2]

    # -- the admin's operations -------------------------------------------------------------------
    def create(
        self, tenant: str, department: str | None = None, limits: Limits | None = None
    ) -> tuple[str, str]:
        """A new key: ``(key_id, key)``; only its hash reaches the database."""
        self.tenants.check_scope(tenant, department)
        created = utc_now()
        while True:  # an id taken already (one in 4 billion per key): draw again
            key = new_key()
            record = KeyRecord(new_key_id(), tenant, department, created, limits=limits or None)
            if self.db.insert_key(key_digest(key), record):
                break
        self.refresh()  # this gateway sees its own change before it answers
        return record.key_id, key

    def revoke(self, key_id: str) -> KeyRecord:
        record = self.db.revoke_key(key_id)
        if record is None:
            raise NotFoundError(f"{self.source}: there is no API key with id {key_id!r}")
        self.refresh()
        return record

    def list(self) -> builtins.list[KeyRecord]:
        """Every key's record from the database (never the key or its hash), oldest first."""
        return sorted(self.db.all_keys(), key=lambda r: (r.created, r.key_id))

    def close(self) -> None:
        self._on_close()
