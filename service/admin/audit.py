"""Writing a change into the audit log: from the gateway (through its ledger writer) or from the command.

The gateway awaits the ledger's commit before it answers (``record``). When the database cannot
take it in time, the change is done all the same (undoing it could fail too): the entry stays in
the writer's memory and is written when the database is back; the answer says so in its
``x-loragate-audit`` header (``written`` or ``pending``) and the gateway logs an error.

``loragate keys ...`` and ``loragate adapters ...`` write their entry straight into the ledger
database their settings name (``ledger_url``), as actor ``cli:<user>``. When it cannot be reached
the command still succeeds and warns that the change is not in the audit log.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os

from ..config import Settings
from ..ledger import Ledger, LedgerError, open_store, redacted
from .operations import Change

log = logging.getLogger(__name__)

AUDIT_HEADER = "x-loragate-audit"
AUDIT_WAIT = 5.0  # seconds an admin answer waits for its audit entry's commit, as a request's record does


async def record(ledger: Ledger, actor: str, change: Change) -> bool:
    """Commits ``change`` as ``actor``'s; False (logged) when it is only queued for later."""
    try:
        await asyncio.wait_for(ledger.audit(change.entry(actor)), AUDIT_WAIT)
    except (LedgerError, TimeoutError) as exc:
        log.error(
            "admin action %s on %s by %s is done, but its audit entry is not committed yet: %s",
            change.action,
            change.target,
            actor,
            exc or type(exc).__name__,
        )
        return False
    return True


def cli_actor() -> str:
    """``cli:<user>``: who ran the command (the uid when the system has no name for it)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return f"cli:uid{os.getuid()}"


def record_from_cli(settings: Settings, change: Change) -> str | None:
    """Writes ``change`` into the ledger database now; a warning to print when it could not."""
    url = settings.resolved_ledger_url
    try:
        store = open_store(url)  # as the gateway opens it: a SQLite file is created with its schema
        try:
            store.write([], [change.entry(cli_actor())])
        finally:
            store.close()
    except Exception as exc:  # the driver's own errors too: the change is done, the command must not fail
        return f"the ledger at {redacted(url)} cannot be written ({type(exc).__name__}: {exc})"
    return None
