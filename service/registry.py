"""The adapter registry: versioned LoRA adapters on disk, and aliases that point at them.

Layout under the registry root::

    adapters/<name>/<version>/adapter_config.json
                             adapter_model.safetensors
                             manifest.json         name, version, level, base model, sha256, ...
    aliases.json                                   alias -> current "name@version" and its history

Only adapters that vLLM could serve get in (see ``check_servable``), and the
gateway only ever loads paths from here, never a path a client sent. Aliases
change with ``promote``/``rollback``; readers notice the file's change on their
next look-up, so no restart is needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from .reloading import FileWatch, Signature, signatures

if TYPE_CHECKING:
    from .config import Settings

VLLM_LORA_RANKS = frozenset({1, 8, 16, 32, 64, 128, 256, 320, 512})
_REFUSED_INITS = ("pissa", "olora", "loftq", "corda", "eva")
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
MANIFEST = "manifest.json"


class AdapterRejected(ValueError):
    """An adapter that must not be registered or served (a domain error: the planner maps it to a 500
    for the deployment's own adapter, the commands print it)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class AdapterManifest(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: int = Field(ge=1)
    level: Literal["L2", "L3"]
    base_model: str
    sha256: str
    created: str
    rank: int
    recipe: dict[str, Any] = Field(default_factory=dict)
    evaluation: dict[str, Any] = Field(default_factory=dict)

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


def check_servable(folder: Path) -> dict[str, Any]:
    """Refuse what vLLM would refuse; return the adapter's config."""
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise AdapterRejected(f"{folder} needs {CONFIG} and {WEIGHTS}")
    config: dict[str, Any] = json.loads((folder / CONFIG).read_text())
    problems = _config_problems(config)
    from safetensors import safe_open

    with safe_open(folder / WEIGHTS, framework="pt") as weights:
        extra = [k for k in weights.keys() if "lora_" not in k]  # noqa: SIM118 (safe_open has no __iter__)
    if extra:
        problems.append(f"weights other than LoRA matrices (added tokens or saved modules): {extra[:3]}")
    if problems:
        raise AdapterRejected(f"adapter {folder.name!r} cannot be served: " + "; ".join(problems))
    return config


Stamp = tuple[Signature | None, ...]  # the signatures of an adapter's files, None for a missing one


class Registry:
    """Adapters and aliases under ``root``; both are looked at again when their files change.

    The aliases file is a :class:`~service.reloading.FileWatch` that keeps no "last good" version:
    only ``promote`` and ``rollback`` write it, atomically, so a broken one is an error to raise (on
    every look-up until it is fixed), not an edit to ride out. Adapters are not a watch at all: a
    version's three files share one stamp, checked on every use, and files that change and then
    fail the checks must be refused, never served as they were.
    """

    def __init__(self, root: Path, base_model: str, base_aliases: tuple[str, ...] = ()):
        self.root = root
        self.base_model = base_model
        # other names of the served base (its folder, a hub id) that adapters may record
        self._base_names = {n.casefold() for n in (base_model, *base_aliases)}
        # (name, version) -> its files, and the adapter checked against their stamps: checks once per version
        self._files: dict[tuple[str, int], tuple[str, ...]] = {}
        self._checked: dict[tuple[str, int], tuple[Stamp, Adapter]] = {}
        self._aliases_file = root / "aliases.json"
        self._aliases: FileWatch[dict[str, dict[str, Any]]] = FileWatch(
            self._aliases_file, self._load_aliases, initial={}
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """The gateway's registry: ``settings.registry_dir``, for the served model under any of its names.

        The model's folder (and its last part) count as the base model's names, so adapters trained
        on the packaged model's path are accepted by ``publish``.
        """
        path = settings.resolved_model_path
        return cls(settings.registry_dir, settings.model_name, base_aliases=(str(path), path.name))

    # -- adapters ------------------------------------------------------------
    def _folder(self, name: str, version: int) -> Path:
        return self.root / "adapters" / name / str(version)

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
        """Copy a trained adapter folder in as the next (or given) version of ``name``."""
        config = check_servable(source)
        base = str(config.get("base_model_name_or_path") or self.base_model)
        if base.casefold() not in self._base_names and Path(base).name.casefold() not in self._base_names:
            raise AdapterRejected(
                f"adapter {name!r} was trained on {base!r}, not the served {self.base_model!r}"
            )
        version = version or 1 + max((a.manifest.version for a in self.versions(name)), default=0)
        target = self._folder(name, version)
        if target.exists():
            raise AdapterRejected(f"{name}@{version} already exists; versions are immutable")
        manifest = AdapterManifest(
            name=name,
            version=version,
            level=level,
            base_model=self.base_model,
            sha256=sha256_of(source / WEIGHTS),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            rank=int(config["r"]),
            recipe=recipe or {},
            evaluation=evaluation or {},
        )
        tmp = target.with_name(f".{version}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for file in (CONFIG, WEIGHTS):
            shutil.copy2(source / file, tmp / file)
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        tmp.rename(target)
        return Adapter(manifest, target)

    def load(self, name: str, version: int) -> Adapter:
        """An adapter checked again whenever its files change: base model, sha256, servability.

        Requests call this on every use; while the files' sizes and mtimes are unchanged the
        checks (a manifest parse, a safetensors header read, a sha256) are not repeated.
        """
        key = (name, version)
        files = self._files.get(key)
        if files is None:  # strings made once: building Paths costs more than the stat calls
            files = self._files[key] = tuple(
                str(self._folder(name, version) / f) for f in (MANIFEST, CONFIG, WEIGHTS)
            )
        stamp = signatures(files)
        checked = self._checked.get(key)
        if checked is not None and checked[0] == stamp:
            return checked[1]
        folder = self._folder(name, version)
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
        folder = self.root / "adapters" / name
        if not folder.is_dir():
            return []
        found = []
        for child in folder.iterdir():
            if child.name.isdigit() and (child / MANIFEST).is_file():
                found.append(
                    Adapter(AdapterManifest.model_validate_json((child / MANIFEST).read_text()), child)
                )
        return sorted(found, key=lambda a: a.manifest.version)

    def names(self) -> list[str]:
        folder = self.root / "adapters"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    # -- aliases -------------------------------------------------------------
    def aliases(self) -> dict[str, str]:
        """alias -> "name@version", re-read when the file changed."""
        return {alias: entry["current"] for alias, entry in self._aliases.current().items()}

    def history(self, alias: str) -> list[str]:
        """The earlier targets of ``alias``, oldest first: what ``rollback`` steps back through."""
        return [str(ref) for ref in self._aliases.current().get(alias, {}).get("history", [])]

    def _load_aliases(self) -> dict[str, dict[str, Any]]:
        try:
            aliases: dict[str, dict[str, Any]] = json.loads(self._aliases_file.read_text())["aliases"]
            return aliases
        except FileNotFoundError:
            return {}

    def _write_aliases(self, aliases: dict[str, dict[str, Any]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._aliases_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"aliases": aliases}, indent=2, sort_keys=True))
        os.replace(tmp, self._aliases_file)

    def resolve(self, alias: str) -> Adapter:
        current = self.aliases().get(alias)
        if current is None:
            raise AdapterRejected(f"no adapter alias {alias!r}")
        name, _, version = current.partition("@")
        return self.load(name, int(version))

    def promote(self, alias: str, ref: str) -> str:
        """Point ``alias`` at ``name@version`` (checked first); the old target goes to its history."""
        name, _, version = ref.partition("@")
        if not version.isdigit():
            raise AdapterRejected(f"{ref!r} is not of the form name@version")
        adapter = self.load(name, int(version))
        aliases = {k: dict(v) for k, v in self._aliases.current().items()}
        entry = aliases.setdefault(alias, {"current": None, "history": []})
        if entry["current"] == adapter.ref:
            return adapter.ref
        if entry["current"]:
            entry["history"] = [*entry.get("history", []), entry["current"]]
        entry["current"] = adapter.ref
        self._write_aliases(aliases)
        return adapter.ref

    def rollback(self, alias: str) -> str:
        """Point ``alias`` back at its previous target."""
        aliases = {k: dict(v) for k, v in self._aliases.current().items()}
        entry = aliases.get(alias)
        if not entry or not entry.get("history"):
            raise AdapterRejected(f"alias {alias!r} has no earlier version to roll back to")
        entry["current"] = entry["history"][-1]
        entry["history"] = entry["history"][:-1]
        self._write_aliases(aliases)
        return str(entry["current"])
