"""The factory publishes into an s3:// registry named by a recipe's ``publish.registry``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.publish import registry_for, registry_location
from service.registry_store_s3 import S3Store

from ..conftest import TINY_MODEL
from .conftest import OpenRegistry
from .s3_server import MotoServer


def test_a_recipe_path_keeps_its_s3_url() -> None:
    assert registry_location(Path("s3://adapters/team/prod")) == "s3://adapters/team/prod"
    assert registry_location(Path("data/registry")) == "data/registry"


def test_registry_for_an_s3_recipe_publishes_where_gateways_read(
    moto: MotoServer,
    s3_url: str,
    adapter_dirs: list[Path],
    tiny_model_dir: Path,
    tmp_path: Path,
    open_registry: OpenRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LORAGATE_S3_ENDPOINT_URL", moto.endpoint)
    monkeypatch.setenv("LORAGATE_REGISTRY_CACHE_DIR", str(tmp_path / "factory-cache"))
    recipe: Any = SimpleNamespace(publish=SimpleNamespace(registry=Path(s3_url)), base_model=tiny_model_dir)
    factory = registry_for(recipe, TINY_MODEL)
    assert isinstance(factory.store, S3Store) and factory.location == s3_url
    assert factory.root == tmp_path / "factory-cache"
    published = factory.publish(adapter_dirs[0], name="it-helpdesk", level="L2")
    factory.promote("it-helpdesk", published.ref)
    assert open_registry("gateway").resolve("it-helpdesk").manifest.sha256 == published.manifest.sha256
