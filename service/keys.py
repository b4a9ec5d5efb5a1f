"""API keys of the tenants: stored only as hashes, found by their hash, never logged.

The keys file (JSON, mode 0600, ``LORAGATE_KEYS_FILE``)::

    {"keys": [{"id": "key_ab12cd34", "sha256": "<hex>", "tenant": "acme", "department": "it" | null,
               "created": "2026-01-01T00:00:00Z", "revoked": false,
               "limits": {"requests_per_minute": 60, ...}}]}   # "limits": optional, the key's own

``loragate keys create|revoke`` change it under an exclusive lock and replace it atomically (a temp
file, then ``os.replace``); a running gateway re-reads it when it changes, so a new or revoked key
takes effect on the next request, with no restart.

With ``state_url`` the keys live in PostgreSQL instead (``service.shared_state.SharedKeyStore``),
shared by several gateways; both stores are a :class:`KeyDirectory`, which is all the rest of the
gateway sees.

Why plain SHA-256 and not a slow password hash: keys are 256 random bits (``secrets``), not
something a person chose, so there is no dictionary to try and brute force is out of reach; a slow
hash would only add its cost to every request.

A presented key is looked up by its hash in a dict, so a request costs the same with ten keys or
ten thousand. What the lookup's timing could reveal is how much of a stored hash the presented
key's hash matched; the caller cannot steer that hash (it would need SHA-256 preimages), so it
tells them nothing about any key.
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from .errors import NotFoundError
from .limits.policy import Limits
from .reloading import FileWatch

log = logging.getLogger(__name__)

KEY_PREFIX = "lg-"
ID_PREFIX = "key_"

_Entry = tuple[str, "KeyRecord"]  # (sha256 hex of the key, its record)
_Entries = list[_Entry]  # an alias, as `list` in the class body is KeyStore.list


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    tenant: str
    department: str | None  # the department the key is pinned to
    created: str  # ISO 8601, UTC
    revoked: bool = False
    limits: Limits | None = None  # the key's own rate limits and budgets (service/limits/); None: unlimited


class KeyStoreError(ValueError):
    """A keys file that cannot be read; the message names the file (and never holds a key or hash)."""


class Scopes(Protocol):
    """What a new key's tenant and department are checked against (``tenancy.TenantDirectory``).

    A protocol, so that this module need not import ``tenancy``, which imports it.
    """

    def check_scope(self, tenant: str, department: str | None) -> None: ...


class KeyDirectory(Protocol):
    """Where the keys are kept: the keys file (:class:`KeyStore`) or the shared database.

    ``lookup`` is the hot path (every request): it never does I/O beyond a ``stat``. ``find`` is
    ``lookup`` for an async caller, and may ask the database about a key this process has not
    heard of yet (one created on another gateway a moment ago).
    """

    tenants: Scopes

    @property
    def source(self) -> str: ...  # where the keys are, for messages: a path, or a redacted URL

    def create(
        self, tenant: str, department: str | None = None, limits: Limits | None = None
    ) -> tuple[str, str]: ...

    def revoke(self, key_id: str) -> KeyRecord: ...

    def lookup(self, key: str) -> KeyRecord | None: ...

    async def find(self, key: str) -> KeyRecord | None: ...

    def list(self) -> builtins.list[KeyRecord]: ...

    def close(self) -> None: ...


class _Keys(NamedTuple):
    entries: _Entries
    active: Mapping[str, KeyRecord]  # hash -> record, the keys not revoked

    @classmethod
    def of(cls, entries: _Entries) -> _Keys:
        return cls(entries, {digest: record for digest, record in entries if not record.revoked})


def key_digest(key: str) -> str:
    """What is stored of a key: its SHA-256, hex (see the module doc for why no slower hash)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return ID_PREFIX + secrets.token_hex(4)


def utc_now() -> str:
    """A key's ``created``: ISO 8601, UTC, to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KeyStore:
    """The keys file; ``tenants`` checks that a new key's tenant and department exist."""

    def __init__(self, path: Path, tenants: Scopes):
        self.path = path
        self.tenants = tenants
        self._keys = FileWatch(
            path,
            self._load,
            refused=KeyStoreError,
            log=log,
            keeps="the previous keys stay in force",
        )

    def create(
        self, tenant: str, department: str | None = None, limits: Limits | None = None
    ) -> tuple[str, str]:
        """A new key for ``tenant`` (pinned to ``department`` if given, with its own ``limits`` if given):
        ``(key_id, key)``.

        The key itself is returned once and stored nowhere; only its hash is written.
        """
        self.tenants.check_scope(tenant, department)
        key = new_key()
        created = utc_now()
        with self._update() as entries:
            taken = {record.key_id for _, record in entries}
            key_id = new_key_id()
            while key_id in taken:
                key_id = new_key_id()
            record = KeyRecord(key_id, tenant, department, created, limits=limits or None)
            entries.append((key_digest(key), record))
        return key_id, key

    def revoke(self, key_id: str) -> KeyRecord:
        """Mark a key revoked (it stops working on the next request); revoking twice is harmless."""
        with self._update() as entries:
            for i, (digest, record) in enumerate(entries):
                if record.key_id == key_id:
                    entries[i] = (digest, replace(record, revoked=True))
                    return entries[i][1]
            raise NotFoundError(f"{self.path}: there is no API key with id {key_id!r}")

    def lookup(self, key: str) -> KeyRecord | None:
        """The record of an active key, or None (unknown or revoked): one dict lookup by its hash."""
        return self._keys.current().active.get(key_digest(key))

    async def find(self, key: str) -> KeyRecord | None:
        """``lookup``: the file is the whole truth, there is nothing else to ask."""
        return self.lookup(key)

    @property
    def source(self) -> str:
        return str(self.path)

    def entries(self) -> _Entries:
        """The file's ``(sha256, record)`` pairs, revoked ones too: what ``loragate state import`` copies."""
        return self._read()

    def close(self) -> None:
        """Nothing to release: the file is read on demand."""

    def list(self) -> builtins.list[KeyRecord]:
        """Every key's record (never the key or its hash), oldest first."""
        entries = self._keys.current().entries
        return sorted((record for _, record in entries), key=lambda r: (r.created, r.key_id))

    # -- the file ------------------------------------------------------------------------------------
    def _load(self) -> _Keys:
        return _Keys.of(self._read())

    def _read(self) -> _Entries:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise KeyStoreError(f"{self.path}: cannot read the keys file ({exc.strerror})") from None
        try:
            return [_entry(item) for item in json.loads(text)["keys"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyStoreError(f"{self.path}: not a valid keys file ({type(exc).__name__})") from None

    @contextmanager
    def _update(self) -> Iterator[_Entries]:
        """Read, change and write the file under an exclusive lock (other ``loragate keys`` wait)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()  # the file as it is now; a broken one is not overwritten
            yield entries
            self._write(entries)
        finally:
            os.close(lock)  # releases the lock

    def _write(self, entries: _Entries) -> None:
        # mkstemp creates the file with mode 0600, whatever the umask; os.replace makes the swap atomic
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"keys": [_item(digest, record) for digest, record in entries]}, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _entry(item: dict[str, Any]) -> _Entry:
    department = item.get("department")
    record = KeyRecord(
        key_id=str(item["id"]),
        tenant=str(item["tenant"]),
        department=None if department is None else str(department),
        created=str(item["created"]),
        revoked=bool(item.get("revoked", False)),
        limits=Limits.parse(item.get("limits")),
    )
    digest = item["sha256"]
    if not isinstance(digest, str) or len(digest) != 64:
        raise ValueError("sha256")
    return digest, record


def _item(digest: str, record: KeyRecord) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": record.key_id,
        "sha256": digest,
        "tenant": record.tenant,
        "department": record.department,
        "created": record.created,
        "revoked": record.revoked,
    }
    if record.limits:
        item["limits"] = record.limits.to_dict()
    return item
