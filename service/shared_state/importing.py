"""``loragate state import``: the keys file and the tenants file into the shared database, once.

A one-shot command rather than an import at start-up: when several gateways start on an empty
database, each would import its own files, and which files won would be a race. The command is
safe to run again: a key whose id or hash is stored already is skipped (a revoked key stays
revoked), and the tenants document is imported only while the database has none (after that,
replace it through the admin API, ``PUT /admin/v1/tenants``, which keeps every version).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..keys import KeyStore
from ..tenancy import TenantDirectory, parse_tenants
from .database import StateDatabase


@dataclass(frozen=True)
class Imported:
    keys_read: int
    keys_added: int  # the others were in the database already
    tenants_version: int | None  # the version the import stored; None: none stored
    tenants_kept: int | None  # the version already in the database, left as it was


def import_files(
    db: StateDatabase, keys_file: Path, tenants_file: Path | None, base_model: str, actor: str
) -> Imported:
    """Copies the files into ``db``; ``TenantsFileError``/``KeyStoreError`` (nothing written) when one
    cannot be used. Keys whose tenant the tenants file lacks are copied all the same: they are
    refused at authentication, as they would be with the files."""
    text = None
    if tenants_file is not None:
        text = TenantDirectory(tenants_file, base_model).document()
        parse_tenants(text, base_model, tenants_file)  # raises before anything is written
    entries = KeyStore(keys_file, TenantDirectory(None, base_model)).entries()
    stored = db.tenants()
    version = None
    if text is not None and stored is None:
        version = db.add_tenants(text, actor)
    added = db.import_keys(entries) if entries else 0
    return Imported(len(entries), added, version, stored.version if stored else None)
