"""Where the adapter registry keeps its objects: the seam between ``Registry`` and its storage.

A store holds adapter versions (three files each: config, weights, manifest) and one aliases
document, in the same layout wherever it lives::

    adapters/<name>/<version>/adapter_config.json
                             adapter_model.safetensors
                             manifest.json       written last: a version without it is not there
    aliases.json                                 {"aliases": {alias: {"current", "history"}}}

``FolderStore`` is a folder on local disk (``registry_dir``, the default). ``S3Store``
(``service.registry_store_s3``) is an ``s3://bucket/prefix`` that several gateways share; it
syncs the versions that are used into a local cache, because engines load adapters from disk.
The ``Registry`` does every check (servability, base model, sha256) on the local folder a store
hands out, so both stores are held to the same rules.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .reloading import FileWatch

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
MANIFEST = "manifest.json"
ALIASES = "aliases.json"

Aliases = dict[str, dict[str, Any]]  # alias -> {"current": "name@version", "history": [...]}
AliasChange = Callable[[Aliases], Aliases]  # a pure function of the current aliases: it may run again


class AdapterRejected(ValueError):
    """An adapter that must not be registered or served (a domain error: the planner maps it to a 500
    for the deployment's own adapter, the commands print it)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class RegistryUnavailable(AdapterRejected):
    """The registry's storage cannot be reached or read (network, credentials, a missing bucket):
    a problem of the deployment, not of the adapter, and worth retrying later."""


class VersionExists(AdapterRejected):
    """``name@version`` is taken: versions are immutable."""


class RegistryStore(Protocol):
    """What ``Registry`` needs from storage. Manifests travel as JSON text: the store does not parse them."""

    location: str  # for messages: a folder, or s3://bucket/prefix

    def names(self) -> list[str]: ...

    def version_numbers(self, name: str) -> list[int]:
        """The versions of ``name`` that have files, complete or still being written (numbers are taken)."""

    def manifest(self, name: str, version: int) -> str | None:
        """The version's manifest.json, None if it is not (yet) published."""

    def add_version(self, name: str, version: int, source: Path, manifest: str) -> Path:
        """Copy ``source``'s config and weights in as ``name@version``, the manifest last; return its
        local folder. Raises ``VersionExists`` if the version is taken (also by a concurrent publish)."""

    def folder(self, name: str, version: int) -> Path:
        """A local folder holding the version's files (a remote store syncs them first)."""

    def is_local(self, name: str, version: int) -> bool:
        """Whether ``folder`` would do no network I/O: a caller on an event loop may call it inline."""

    def aliases(self) -> Aliases: ...

    def aliases_are_fresh(self) -> bool:
        """Whether ``aliases()`` would answer from memory (no network I/O)."""

    def update_aliases(self, change: AliasChange) -> Aliases:
        """Apply ``change`` atomically: two writers at once never lose an update. Returns the result."""


class FolderStore:
    """The registry in a local folder. Aliases are re-read when the file's stat changes; updates hold
    an ``flock`` on ``.aliases.lock``, so two processes on one host that promote at once both land."""

    def __init__(self, root: Path):
        self.root = root
        self.location = str(root)
        self._aliases_file = root / ALIASES
        self._aliases: FileWatch[Aliases] = FileWatch(self._aliases_file, self._read_aliases, initial={})

    def _version_folder(self, name: str, version: int) -> Path:
        return self.root / "adapters" / name / str(version)

    def names(self) -> list[str]:
        folder = self.root / "adapters"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def version_numbers(self, name: str) -> list[int]:
        folder = self.root / "adapters" / name
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())

    def manifest(self, name: str, version: int) -> str | None:
        try:
            return (self._version_folder(name, version) / MANIFEST).read_text()
        except FileNotFoundError:
            return None

    def add_version(self, name: str, version: int, source: Path, manifest: str) -> Path:
        target = self._version_folder(name, version)
        if target.exists():
            raise VersionExists(f"{name}@{version} already exists; versions are immutable")
        tmp = target.with_name(f".{version}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for file in (CONFIG, WEIGHTS):
            shutil.copy2(source / file, tmp / file)
        (tmp / MANIFEST).write_text(manifest)
        try:
            tmp.rename(target)  # atomic; fails if a concurrent publish took the version first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise VersionExists(f"{name}@{version} already exists; versions are immutable") from None
        return target

    def folder(self, name: str, version: int) -> Path:
        return self._version_folder(name, version)

    def is_local(self, name: str, version: int) -> bool:
        return True

    def aliases(self) -> Aliases:
        return self._aliases.current()

    def aliases_are_fresh(self) -> bool:
        return True

    def _read_aliases(self) -> Aliases:
        try:
            aliases: Aliases = json.loads(self._aliases_file.read_text())["aliases"]
            return aliases
        except FileNotFoundError:
            return {}

    def update_aliases(self, change: AliasChange) -> Aliases:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".aliases.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            aliases = change(self._read_aliases())
            tmp = self._aliases_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"aliases": aliases}, indent=2, sort_keys=True))
            os.replace(tmp, self._aliases_file)
        return aliases


def open_store(
    location: Path | str, *, cache_dir: Path | None = None, endpoint_url: str | None = None
) -> RegistryStore:
    """``s3://bucket/prefix`` -> an ``S3Store`` syncing into ``cache_dir``; anything else is a folder."""
    if str(location).startswith("s3://"):
        from .registry_store_s3 import S3Store

        return S3Store(str(location), cache_dir or Path("data/registry-cache"), endpoint_url=endpoint_url)
    return FolderStore(Path(location))


def split_ref(ref: str) -> tuple[str, int]:
    """``"name@3"`` -> ("name", 3)."""
    name, _, version = ref.partition("@")
    if not version.isdigit():
        raise AdapterRejected(f"{ref!r} is not of the form name@version")
    return name, int(version)
