"""The registry's aliases in the state database (``state_url``); the adapters stay in their store.

With ``state_url`` set, keys, tenants and aliases are what several gateways share through
PostgreSQL, as issue 18 asks: a promote or rollback through any gateway (or ``loragate adapters
promote`` on any host) is in the database, and every gateway reads it within ``ALIAS_TTL``. The
adapter files stay where the registry keeps them (a folder, or ``s3://``), and so does the
registry's own aliases document, which is read until the first promote against the database and
then seeds it: an existing deployment keeps its aliases when it turns ``state_url`` on.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from ..registry_store import AliasChange, Aliases, RegistryStore
from .database import StateDatabase, StateUnavailable

log = logging.getLogger(__name__)

ALIAS_TTL = 1.0  # seconds a gateway serves the aliases it read before it reads them again


class SharedAliases:
    """A ``RegistryStore``: ``store``'s adapters, the database's aliases."""

    def __init__(self, store: RegistryStore, database: StateDatabase, ttl: float = ALIAS_TTL):
        self.store, self.database, self.ttl = store, database, ttl
        self.location = f"{store.location} (aliases: {database.name})"
        self._read: tuple[float, Aliases] | None = None  # when, and what
        self._lock = threading.Lock()

    # -- aliases -------------------------------------------------------------------------------
    def aliases(self) -> Aliases:
        read = self._read
        if read is not None and time.monotonic() - read[0] < self.ttl:
            return read[1]
        with self._lock:
            try:
                aliases = self.database.aliases()
            except StateUnavailable as exc:
                if read is None:
                    raise
                log.warning("adapter aliases: %s; serving the last ones read", exc.message)
                self._read = (time.monotonic(), read[1])  # try again after the TTL, not on every request
                return read[1]
            if aliases is None:  # no promote through the database yet: the store's own
                aliases = self.store.aliases()
            self._read = (time.monotonic(), aliases)
        return aliases

    def aliases_are_fresh(self) -> bool:
        read = self._read
        return read is not None and time.monotonic() - read[0] < self.ttl

    def update_aliases(self, change: AliasChange) -> Aliases:
        aliases = self.database.update_aliases(change, seed=self.store.aliases)
        self._read = (time.monotonic(), aliases)  # this gateway sees its own change at once
        return aliases

    # -- the adapters: the store's -------------------------------------------------------------
    def names(self) -> list[str]:
        return self.store.names()

    def version_numbers(self, name: str) -> list[int]:
        return self.store.version_numbers(name)

    def manifest(self, name: str, version: int) -> str | None:
        return self.store.manifest(name, version)

    def add_version(self, name: str, version: int, source: Path, manifest: str) -> Path:
        return self.store.add_version(name, version, source, manifest)

    def folder(self, name: str, version: int) -> Path:
        return self.store.folder(name, version)

    def is_local(self, name: str, version: int) -> bool:
        return self.store.is_local(name, version)
