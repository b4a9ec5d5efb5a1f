"""The registry's aliases in the state database: promotes seen by every registry on it, none lost."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from service.config import Settings
from service.registry import FolderStore, Registry
from service.shared_state.aliases import SharedAliases
from service.shared_state.database import StateDatabase
from tests.demo_adapters import make_adapter

BASE = "tiny-llama"


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("lora") / "a")


def registry(root: Path, state_url: str, tiny_model_dir: Path, ttl: float = 0.0) -> Registry:
    store = SharedAliases(FolderStore(root), StateDatabase(state_url), ttl=ttl)
    return Registry(store, BASE, base_aliases=(str(tiny_model_dir),))


def test_a_promote_on_one_host_is_seen_on_another(
    tmp_path: Path, state_url: str, tiny_model_dir: Path, adapter_dir: Path
) -> None:
    """Two hosts, each with its own copy of the adapters and nothing else shared but the database."""
    first = registry(tmp_path / "one", state_url, tiny_model_dir)
    for level in ("L2", "L3"):
        first.publish(adapter_dir, name="helpdesk", level=level)
    shutil.copytree(tmp_path / "one", tmp_path / "two")  # the same versions, synced to the other host
    second = registry(tmp_path / "two", state_url, tiny_model_dir)
    first.promote("it", "helpdesk@1")
    assert second.resolve("it").ref == "helpdesk@1"
    second.promote("it", "helpdesk@2")
    assert first.resolve("it").ref == "helpdesk@2"
    assert first.rollback("it") == "helpdesk@1"
    assert second.resolve("it").ref == "helpdesk@1"
    assert not (tmp_path / "one" / "aliases.json").exists()  # in the database, not in a host's folder


def test_the_store_s_aliases_seed_the_database(
    tmp_path: Path, state_url: str, tiny_model_dir: Path, adapter_dir: Path
) -> None:
    """Turning state_url on keeps a deployment's aliases: read from the store until the first promote."""
    plain = Registry(tmp_path / "registry", BASE, base_aliases=(str(tiny_model_dir),))
    plain.publish(adapter_dir, name="helpdesk", level="L2")
    plain.publish(adapter_dir, name="legal", level="L2")
    plain.promote("it", "helpdesk@1")
    shared = registry(tmp_path / "registry", state_url, tiny_model_dir)
    assert shared.resolve("it").ref == "helpdesk@1"
    shared.promote("law", "legal@1")
    other = registry(tmp_path / "registry", state_url, tiny_model_dir)
    assert other.aliases() == {"it": "helpdesk@1", "law": "legal@1"}


def test_concurrent_promotes_through_two_registries_lose_nothing(
    tmp_path: Path, state_url: str, tiny_model_dir: Path, adapter_dir: Path
) -> None:
    first = registry(tmp_path / "registry", state_url, tiny_model_dir)
    first.publish(adapter_dir, name="helpdesk", level="L2")
    second = registry(tmp_path / "registry", state_url, tiny_model_dir)
    aliases = [f"team-{i}" for i in range(8)]

    def promote(index: int) -> None:
        (first if index % 2 else second).promote(aliases[index], "helpdesk@1")

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(len(aliases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(first.aliases()) == set(aliases)


def test_within_the_ttl_a_gateway_reads_no_database(
    tmp_path: Path, state_url: str, tiny_model_dir: Path, adapter_dir: Path
) -> None:
    writer = registry(tmp_path / "registry", state_url, tiny_model_dir)
    writer.publish(adapter_dir, name="helpdesk", level="L2")
    writer.publish(adapter_dir, name="helpdesk", level="L3")
    writer.promote("it", "helpdesk@1")
    reader = registry(tmp_path / "registry", state_url, tiny_model_dir, ttl=3600)
    assert reader.resolve("it").ref == "helpdesk@1" and reader.store.aliases_are_fresh()
    writer.promote("it", "helpdesk@2")
    assert reader.resolve("it").ref == "helpdesk@1"  # its read is still fresh: no query


def test_the_gateway_s_registry_keeps_its_aliases_in_the_database(tmp_path: Path, state_url: str) -> None:
    settings = Settings(registry_dir=tmp_path / "registry", state_url=state_url, model_path=tmp_path / "m")
    assert isinstance(Registry.from_settings(settings).store, SharedAliases)
    assert not isinstance(Registry.from_settings(Settings(registry_dir=tmp_path)).store, SharedAliases)
