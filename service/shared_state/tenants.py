"""The tenants document in the shared database: numbered versions, the newest good one in force.

``replace`` validates a document (the same parser as the tenants file's) before it is stored, so a
version that cannot be used never reaches the database; every gateway's watcher then loads the new
version. Should a stored version still fail here (a gateway serving another base model, whose name
an alias may not take), it is logged and this gateway keeps the version it had, as a broken edit of
the tenants file is. An empty database means single-tenant mode until a document is stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..tenancy import Tenant, TenantDirectory, TenantsFileError, TenantSnapshot, parse_tenants
from .database import StateDatabase

log = logging.getLogger(__name__)


class SharedTenantDirectory(TenantDirectory):
    """A :class:`service.tenancy.TenantDirectory` whose document is kept in the state database."""

    shared = True

    def __init__(self, db: StateDatabase, base_model: str, on_close: Callable[[], None] = lambda: None):
        super().__init__(None, base_model)
        self.db = db
        self._on_close = on_close
        self._refreshing = threading.Lock()
        self._snapshot = self._builtin
        self._version = 0  # 0: no document yet, single-tenant mode
        self._text: str | None = None
        self.refresh()

    @property
    def source(self) -> str:
        version = f" (version {self._version})" if self._version else ""
        return f"the tenants document in the state database {self.db.name}{version}"

    @property
    def version(self) -> int | None:
        return self._version or None

    @property
    def configured(self) -> bool:
        return True  # a document can always be stored, even into an empty database

    def _current(self) -> TenantSnapshot:
        return self._snapshot

    def refresh(self) -> None:
        """Load the newest version if there is one newer than ours (the watcher's thread, or a replace)."""
        with self._refreshing:
            document = self.db.tenants(newer_than=self._version)
            if document is None:
                return
            self._version = document.version  # a refused version is reported once, not on every poll
            try:
                tenants = parse_tenants(document.yaml, self.base_model, f"tenants version {document.version}")
            except TenantsFileError as exc:
                log.error("%s; the previous tenants stay in force on this gateway", exc)
                return
            self._snapshot = TenantSnapshot.of(tenants)
            self._text = document.yaml
            log.info("tenants version %d loaded (%d tenants)", document.version, len(tenants))

    def reload(self) -> tuple[list[Tenant], list[Tenant]]:
        """Look for a newer version now (the watcher does it by itself): the tenants before and after."""
        before = self.all()
        self.refresh()
        return before, self.all()

    def document(self) -> str:
        if self._text is None:
            raise TenantsFileError(f"{self.source}: no tenants document is stored yet (single-tenant mode)")
        return self._text

    def replace(self, text: str, actor: str) -> tuple[list[Tenant], list[Tenant]]:
        """Validate ``text``, store it as the next version and put it in force here at once;
        ``TenantsFileError`` (nothing stored) when it cannot be used."""
        parse_tenants(text, self.base_model, "the posted tenants document")
        before = self.all()
        self.db.add_tenants(text, actor)
        self.refresh()
        return before, self.all()

    def close(self) -> None:
        self._on_close()
