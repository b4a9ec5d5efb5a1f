"""The adapter registry: versioned LoRA adapters, and aliases that point at them.

Layout, in a local folder (``registry_dir``) or under ``s3://bucket/prefix`` (``registry_url``)::

    adapters/<name>/<version>/adapter_config.json
                             adapter_model.safetensors
                             manifest.json         name, version, level, base model, sha256s, ...
    aliases.json                                   alias -> current "name@version" and its history

Where the objects live is a store's business (``service.registry_store``: a folder;
``service.registry_store_s3``: object storage, synced into a local cache on first use). The
checks are this module's, made on the local files a store hands out. Only adapters that vLLM
could serve get in (see ``check_servable``), and the gateway only ever loads paths from here,
never a path a client sent. Aliases change with ``promote``/``rollback`` (an atomic update in the
store); readers see the change on their next look-up (an s3:// registry: within ``ALIAS_TTL``),
so no restart is needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from .registry_store import (
    CONFIG,
    MANIFEST,
    WEIGHTS,
    AdapterRejected,
    Aliases,
    FolderStore,
    RegistryStore,
    RegistryUnavailable,
    VersionExists,
    open_store,
    split_ref,
)
from .reloading import Signature, signatures

if TYPE_CHECKING:
    from .config import Settings

__all__ = [
    "CONFIG", "MANIFEST", "VLLM_LORA_RANKS", "WEIGHTS", "Adapter", "AdapterManifest", "AdapterRejected",
    "Registry", "RegistryUnavailable", "VersionExists", "check_servable", "open_store", "sha256_of",
]  # fmt: skip
VLLM_LORA_RANKS = frozenset({1, 8, 16, 32, 64, 128, 256, 320, 512})
_REFUSED_INITS = ("pissa", "olora", "loftq", "corda", "eva")
NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_NAME = re.compile(NAME)


class AdapterManifest(BaseModel):
    name: str = Field(pattern=NAME)
    version: int = Field(ge=1)
    level: Literal["L2", "L3"]
    base_model: str
    sha256: str
    created: str
    rank: int
    recipe: dict[str, Any] = Field(default_factory=dict)
    evaluation: dict[str, Any] = Field(default_factory=dict)
    # every file's sha256 (config and weights): what a sync from object storage checks
    files: dict[str, str] = Field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Adapter:
    manifest: AdapterManifest
    path: Path

    @property
    def ref(self) -> str:
        return self.manifest.ref


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _config_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    rank = config.get("r")
    if rank not in VLLM_LORA_RANKS:
        problems.append(f"rank {rank} is not one vLLM serves ({sorted(VLLM_LORA_RANKS)})")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']} (full layer copies) is not supported")
    if config.get("use_dora"):
        problems.append("DoRA adapters are not supported")
    if config.get("bias", "none") != "none":
        problems.append(f"LoRA bias {config['bias']!r} is not supported")
    init = str(config.get("init_lora_weights", "")).lower()
    if any(init.startswith(name) for name in _REFUSED_INITS):
        problems.append(f"init_lora_weights {init!r} changes the base weights")
    if config.get("trainable_token_indices"):
        problems.append("trainable token deltas (added tokens) are not supported")
    if not config.get("target_modules"):
        problems.append("target_modules is empty")
    return problems


MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # bytes; a larger "header" is not a safetensors file


def tensor_names(path: Path) -> list[str]:
    """The tensor names in a safetensors file's header (8 bytes of little-endian length, then JSON):
    read without torch or safetensors, so the slim gateway (no [local] extra) checks adapters too."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if size > MAX_SAFETENSORS_HEADER:
            raise AdapterRejected(f"{path.name}: not a safetensors file (a header of {size} bytes)")
        try:
            header = json.loads(f.read(size))
        except ValueError as exc:
            raise AdapterRejected(f"{path.name}: not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise AdapterRejected(f"{path.name}: not a safetensors file")
    return [name for name in header if name != "__metadata__"]


def check_servable(folder: Path) -> dict[str, Any]:
    """Refuse what vLLM would refuse; return the adapter's config."""
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise AdapterRejected(f"{folder} needs {CONFIG} and {WEIGHTS}")
    config: dict[str, Any] = json.loads((folder / CONFIG).read_text())
    problems = _config_problems(config)
    extra = [k for k in tensor_names(folder / WEIGHTS) if "lora_" not in k]
    if extra:
        problems.append(f"weights other than LoRA matrices (added tokens or saved modules): {extra[:3]}")
    if problems:
        raise AdapterRejected(f"adapter {folder.name!r} cannot be served: " + "; ".join(problems))
    return config


Stamp = tuple[Signature | None, ...]  # the signatures of an adapter's files, None for a missing one


class Registry:
    """Adapters and aliases in a store (a folder, or object storage); both are looked at again on use.

    Aliases come from the store as they are now: a folder's file is re-read when its stat changes,
    an s3:// aliases object within ``ALIAS_TTL``. A broken aliases document is an error to raise
    (on every look-up until it is fixed), not an edit to ride out: only ``promote`` and
    ``rollback`` write it. Adapters are checked on the local folder the store hands out: a
    version's three files share one stamp, checked on every use, and files that change and then
    fail the checks must be refused, never served as they were.
    """

    def __init__(self, root: Path | RegistryStore, base_model: str, base_aliases: tuple[str, ...] = ()):
        self.store: RegistryStore = FolderStore(root) if isinstance(root, Path) else root
        self.root: Path = getattr(self.store, "root", Path("."))  # where the files are on this host
        self.base_model = base_model
        # other names of the served base (its folder, a hub id) that adapters may record
        self._base_names = {n.casefold() for n in (base_model, *base_aliases)}
        # (name, version) -> its files, and the adapter checked against their stamps: checks once per version
        self._files: dict[tuple[str, int], tuple[str, ...]] = {}
        self._checked: dict[tuple[str, int], tuple[Stamp, Adapter]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """The gateway's registry: ``settings.registry_url`` (s3://) when set, else ``registry_dir``,
        for the served model under any of its names.

        The model's folder (and its last part) count as the base model's names, so adapters trained
        on the packaged model's path are accepted by ``publish``.
        """
        store: RegistryStore = open_store(
            settings.registry_url or settings.registry_dir,
            cache_dir=settings.registry_cache_dir,
            endpoint_url=settings.s3_endpoint_url,
        )
        if settings.state_url:  # the aliases in the shared database, with the keys and the tenants
            from .shared_state.aliases import SharedAliases
            from .shared_state.database import StateDatabase

            store = SharedAliases(store, StateDatabase(settings.state_url))
        path = settings.resolved_model_path
        return cls(store, settings.model_name, base_aliases=(str(path), path.name))

    @property
    def location(self) -> str:
        return self.store.location

    # -- adapters ------------------------------------------------------------
    def publish(
        self,
        source: Path,
        *,
        name: str,
        level: Literal["L2", "L3"],
        version: int | None = None,
        recipe: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
    ) -> Adapter:
        """Copy a trained adapter folder in as the next (or given) version of ``name``.

        Without a ``version``, a concurrent publish that takes the next number first makes this one
        try the number after it.
        """
        config = check_servable(source)
        base = str(config.get("base_model_name_or_path") or self.base_model)
        if base.casefold() not in self._base_names and Path(base).name.casefold() not in self._base_names:
            raise AdapterRejected(
                f"adapter {name!r} was trained on {base!r}, not the served {self.base_model!r}"
            )
        files = {file: sha256_of(source / file) for file in (CONFIG, WEIGHTS)}
        for _ in range(10):
            number = version or 1 + max(self.store.version_numbers(name), default=0)
            manifest = AdapterManifest(
                name=name,
                version=number,
                level=level,
                base_model=self.base_model,
                sha256=files[WEIGHTS],
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                rank=int(config["r"]),
                recipe=recipe or {},
                evaluation=evaluation or {},
                files=files,
            )
            try:
                folder = self.store.add_version(name, number, source, manifest.model_dump_json(indent=2))
            except VersionExists:
                if version is not None:
                    raise
                continue
            return Adapter(manifest, folder)
        raise AdapterRejected(f"{name}: other publishes kept taking the next version number; try again")

    def load(self, name: str, version: int) -> Adapter:
        """An adapter checked again whenever its files change: base model, sha256, servability.

        Requests call this on every use; while the files' sizes and mtimes are unchanged the
        checks (a manifest parse, a safetensors header read, a sha256) are not repeated. An s3://
        registry syncs the version into its local cache first (once).
        """
        key = (name, version)
        files = self._files.get(key)
        if files is None:  # strings made once: building Paths costs more than the stat calls
            if not _NAME.match(name):
                raise AdapterRejected(f"no adapter {name}@{version} in the registry")
            folder = self.store.folder(name, version)
            files = tuple(str(folder / f) for f in (MANIFEST, CONFIG, WEIGHTS))
            if (folder / MANIFEST).is_file():
                self._files[key] = files
        stamp = signatures(files)
        checked = self._checked.get(key)
        if checked is not None and checked[0] == stamp:
            return checked[1]
        folder = Path(files[0]).parent
        if not (folder / MANIFEST).is_file():
            raise AdapterRejected(f"no adapter {name}@{version} in the registry")
        manifest = AdapterManifest.model_validate_json((folder / MANIFEST).read_text())
        if manifest.base_model != self.base_model:
            raise AdapterRejected(
                f"{manifest.ref} is for base model {manifest.base_model!r}, not the served {self.base_model!r}"  # noqa: E501
            )
        check_servable(folder)
        if sha256_of(folder / WEIGHTS) != manifest.sha256:
            raise AdapterRejected(f"{manifest.ref}: the weights' sha256 does not match the manifest")
        adapter = Adapter(manifest, folder)
        self._checked[key] = (stamp, adapter)
        return adapter

    def versions(self, name: str) -> list[Adapter]:
        """Every published version of ``name`` (manifests only: nothing is synced or checked)."""
        found = []
        for number in self.store.version_numbers(name):
            text = self.store.manifest(name, number)
            if text is not None:
                manifest = AdapterManifest.model_validate_json(text)
                found.append(Adapter(manifest, self.root / "adapters" / name / str(number)))
        return found

    def names(self) -> list[str]:
        return self.store.names()

    # -- aliases -------------------------------------------------------------
    def aliases(self) -> dict[str, str]:
        """alias -> "name@version", as the store has them now."""
        return {alias: entry["current"] for alias, entry in self.store.aliases().items()}

    def alias_refs(self) -> list[str]:
        """Every version an alias points at now or can roll back to: what a vLLM host keeps synced."""
        entries = self.store.aliases().values()
        return sorted({str(r) for e in entries for r in [e.get("current"), *e.get("history", [])] if r})

    def history(self, alias: str) -> list[str]:
        """The earlier targets of ``alias``, oldest first: what ``rollback`` steps back through."""
        return [str(ref) for ref in self.store.aliases().get(alias, {}).get("history", [])]

    def resolve(self, alias: str) -> Adapter:
        current = self.aliases().get(alias)
        if current is None:
            raise AdapterRejected(f"no adapter alias {alias!r}")
        return self.load(*split_ref(current))

    async def resolve_async(self, alias: str) -> Adapter:
        """``resolve`` for the event loop: inline when it needs no network I/O (a folder registry, or
        fresh aliases and a synced version), else in a worker thread."""
        if self.store.aliases_are_fresh():  # one read of the aliases: this is on every request
            current = self.store.aliases().get(alias, {}).get("current")
            if current is None:
                raise AdapterRejected(f"no adapter alias {alias!r}")
            name, version = split_ref(current)
            if self.store.is_local(name, version):
                return self.load(name, version)
        return await asyncio.to_thread(self.resolve, alias)

    def promote(self, alias: str, ref: str) -> str:
        """Point ``alias`` at ``name@version`` (checked first); the old target goes to its history."""
        name, _, version = ref.partition("@")
        if not version.isdigit():
            raise AdapterRejected(f"{ref!r} is not of the form name@version")
        target = self.load(name, int(version)).ref

        def change(aliases: Aliases) -> Aliases:
            entry = aliases.setdefault(alias, {"current": None, "history": []})
            if entry["current"] != target:
                if entry["current"]:
                    entry["history"] = [*entry.get("history", []), entry["current"]]
                entry["current"] = target
            return aliases

        self.store.update_aliases(change)
        return target

    def rollback(self, alias: str) -> str:
        """Point ``alias`` back at its previous target."""

        def change(aliases: Aliases) -> Aliases:
            entry = aliases.get(alias)
            if not entry or not entry.get("history"):
                raise AdapterRejected(f"alias {alias!r} has no earlier version to roll back to")
            entry["current"] = entry["history"][-1]
            entry["history"] = entry["history"][:-1]
            return aliases

        return str(self.store.update_aliases(change)[alias]["current"])
