"""A whole deployment on disk, built at test time: tenants file, templates, registry, keys."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from service.config import Settings
from service.keys import KeyStore
from service.registry import Registry
from service.tenancy import TenantDirectory

from .conftest import TINY_MODEL, make_settings
from .demo_adapters import make_adapter


@dataclass
class Deployment:
    settings: Settings
    registry: Registry
    keys: KeyStore
    adapters: dict[str, Path]  # "name@version" -> registry folder


def build_deployment(
    root: Path,
    model_dir: Path,
    *,
    tenants: str,
    templates: Mapping[str, str],
    adapters: Sequence[tuple[str | None, str, int]],
    **settings: object,
) -> Deployment:
    """``templates``: file name under prompts/ -> YAML text (dedented);
    ``adapters``: (alias to promote it to or None, adapter name, seed), published in order."""
    (root / "tenants.yaml").write_text(tenants)
    for name, text in templates.items():
        path = root / "prompts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    registry = Registry(root / "registry", TINY_MODEL, base_aliases=(str(model_dir),))
    published = {}
    for alias, name, seed in adapters:
        folder = make_adapter(model_dir, root / "trained" / f"{name}-{seed}", seed=seed)
        adapter = registry.publish(folder, name=name, level="L2")
        published[adapter.ref] = adapter.path
        if alias is not None:
            registry.promote(alias, adapter.ref)
    config = make_settings(
        model_dir,
        tenants_file=root / "tenants.yaml",
        keys_file=root / "keys.json",
        prompts_dir=root / "prompts",
        registry_dir=root / "registry",
        **settings,
    )
    keys = KeyStore(config.keys_file, TenantDirectory(config.tenants_file, TINY_MODEL))
    return Deployment(config, registry, keys, published)
