"""State that several gateways share: API keys and the tenants document in PostgreSQL (``state_url``).

    tenancy = build_tenancy(settings)   # the files (keys_file, tenants_file), or the database (state_url)
    ...
    tenancy.close()                     # stops the watcher, closes the connection

Without ``state_url`` nothing changes: the keys file and the tenants file, re-read when they change,
which is right for one host. With it, the keys (hashes only) and numbered versions of the tenants
document live in the database (``database.py``), each gateway holds a copy in memory that a
watcher thread keeps current through LISTEN/NOTIFY and a 2-second poll (``watcher.py``), and the
request path never waits for the database on a known key (``keys.py``). An empty database is
filled once from the files by ``loragate state import`` (``importing.py``); see docs/operations.md,
"Several gateways".

Named ``shared_state`` because ``service/state.py`` (the app's state) holds the name ``state``.
"""

from __future__ import annotations

import threading

from ..config import Settings
from ..keys import KeyDirectory, KeyStore
from ..tenancy import Tenancy, TenantDirectory
from .database import StateDatabase, StateSchemaError, StateUnavailable
from .keys import SharedKeyStore
from .tenants import SharedTenantDirectory
from .watcher import POLL_SECONDS, StateWatcher

__all__ = [
    "SharedKeyStore",
    "SharedState",
    "SharedTenantDirectory",
    "StateDatabase",
    "StateSchemaError",
    "StateUnavailable",
    "build_tenancy",
    "open_directories",
]


class SharedState:
    """The database, the two stores on it and (in a gateway) the watcher that keeps them current."""

    def __init__(self, url: str, base_model: str, *, watch: bool, interval: float = POLL_SECONDS):
        self.db = StateDatabase(url)
        self._closed = threading.Lock()
        try:
            self.tenants = SharedTenantDirectory(self.db, base_model, on_close=self.close)
            self.keys = SharedKeyStore(self.db, self.tenants, on_close=self.close)
        except BaseException:
            self.db.close()
            raise
        self.watcher: StateWatcher | None = None
        if watch:
            self.watcher = StateWatcher(url, self.db.name, self.refresh, interval).start()

    def refresh(self) -> None:
        self.tenants.refresh()  # first: a key of a tenant added with it finds its tenant
        self.keys.refresh()

    def close(self) -> None:
        """Idempotent: the key store and the directory both call it."""
        if not self._closed.acquire(blocking=False):
            return
        if self.watcher is not None:
            self.watcher.close()
        self.db.close()


def open_directories(
    settings: Settings, *, watch: bool = True, interval: float = POLL_SECONDS
) -> tuple[TenantDirectory, KeyDirectory]:
    """The tenants and the keys as ``settings`` say: the files, or the shared database.

    ``watch``: keep them current with a watcher thread (a gateway); the command does one thing
    and exits, it needs none. Blocks to connect: call it in a worker thread from async code.
    """
    if settings.state_url is None:
        tenants = TenantDirectory(settings.tenants_file, settings.model_name)
        return tenants, KeyStore(settings.keys_file, tenants)
    shared = SharedState(settings.state_url, settings.model_name, watch=watch, interval=interval)
    return shared.tenants, shared.keys


def build_tenancy(settings: Settings) -> Tenancy:
    """The gateway's tenancy (``service/app.py`` builds it at start-up, and closes it at shutdown)."""
    tenants, keys = open_directories(settings)
    return Tenancy(tenants, keys, settings.model_name, settings.api_key)
