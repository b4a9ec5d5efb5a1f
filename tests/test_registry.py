"""The adapter registry: publish, servability checks, aliases, promote and rollback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import service.registry as registry_module
from service.config import Settings
from service.registry import AdapterRejected, Registry, check_servable

from .demo_adapters import make_adapter


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("lora") / "a")


@pytest.fixture
def registry(tmp_path: Path, tiny_model_dir: Path) -> Registry:
    return Registry(tmp_path / "registry", "tiny-llama", base_aliases=(str(tiny_model_dir),))


def test_publish_writes_manifest_with_sha256(registry: Registry, adapter_dir: Path) -> None:
    adapter = registry.publish(adapter_dir, name="helpdesk", level="L2", evaluation={"loss": 1.0})
    manifest = json.loads((adapter.path / "manifest.json").read_text())
    assert (manifest["name"], manifest["version"], manifest["level"], manifest["rank"]) == (
        "helpdesk",
        1,
        "L2",
        8,
    )
    assert manifest["base_model"] == "tiny-llama" and len(manifest["sha256"]) == 64
    assert registry.publish(adapter_dir, name="helpdesk", level="L3").manifest.version == 2
    assert [a.ref for a in registry.versions("helpdesk")] == ["helpdesk@1", "helpdesk@2"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"r": 12}, "rank 12"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"use_dora": True}, "DoRA"),
        ({"bias": "all"}, "bias"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights"),
        ({"trainable_token_indices": [5]}, "trainable token"),
    ],
)
def test_refuses_what_vllm_refuses(adapter_dir: Path, tmp_path: Path, change: dict, message: str) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_model.safetensors").write_bytes((adapter_dir / "adapter_model.safetensors").read_bytes())
    config = json.loads((adapter_dir / "adapter_config.json").read_text()) | change
    (bad / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterRejected, match=message):
        check_servable(bad)


def test_refuses_another_base_model(tmp_path: Path, adapter_dir: Path) -> None:
    other = Registry(tmp_path / "r", "some-other-model")
    with pytest.raises(AdapterRejected, match="not the served"):
        other.publish(adapter_dir, name="x", level="L2")


def test_refuses_tampered_weights(registry: Registry, adapter_dir: Path) -> None:
    adapter = registry.publish(adapter_dir, name="helpdesk", level="L2")
    weights = adapter.path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterRejected, match="sha256"):
        registry.load("helpdesk", 1)


def test_checks_run_once_per_file_version(
    registry: Registry, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = registry.publish(adapter_dir, name="helpdesk", level="L2")
    checked: list[Path] = []
    real_check = registry_module.check_servable
    monkeypatch.setattr(registry_module, "check_servable", lambda p: checked.append(p) or real_check(p))
    assert registry.load("helpdesk", 1) == registry.load("helpdesk", 1) == adapter
    assert len(checked) == 1  # requests load the adapter on every use: the checks are not redone
    weights = adapter.path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))  # same size
    later = weights.stat().st_mtime_ns + 10**9  # a new mtime even where file times are coarse
    os.utime(weights, ns=(later, later))
    with pytest.raises(AdapterRejected, match="sha256"):
        registry.load("helpdesk", 1)


def test_promote_and_rollback_are_seen_by_the_next_lookup(registry: Registry, adapter_dir: Path) -> None:
    registry.publish(adapter_dir, name="helpdesk", level="L2")
    registry.publish(adapter_dir, name="helpdesk", level="L3")
    reader = Registry(registry.root, "tiny-llama")  # another process's view of the same files
    registry.promote("it", "helpdesk@1")
    assert reader.resolve("it").ref == "helpdesk@1"
    registry.promote("it", "helpdesk@2")
    assert reader.resolve("it").ref == "helpdesk@2"
    assert registry.rollback("it") == "helpdesk@1"
    assert reader.resolve("it").ref == "helpdesk@1"
    with pytest.raises(AdapterRejected, match="no earlier version"):
        registry.rollback("it")


def test_promote_refuses_unknown_versions(registry: Registry) -> None:
    with pytest.raises(AdapterRejected):
        registry.promote("it", "helpdesk@9")
    with pytest.raises(AdapterRejected, match="name@version"):
        registry.promote("it", "helpdesk")


def test_a_broken_aliases_file_raises_until_it_is_fixed(registry: Registry) -> None:
    """Unlike the keys and tenants files, the aliases file has no last good version to keep serving."""
    assert registry.aliases() == {}
    registry.root.mkdir(parents=True)
    (registry.root / "aliases.json").write_text("{not json")
    for _ in range(2):
        with pytest.raises(ValueError):
            registry.aliases()
    (registry.root / "aliases.json").write_text('{"aliases": {"it": {"current": "helpdesk@1"}}}')
    assert registry.aliases() == {"it": "helpdesk@1"}


def test_from_settings_knows_the_served_model_by_its_folder(
    tmp_path: Path, tiny_model_dir: Path, adapter_dir: Path
) -> None:
    settings = Settings(
        registry_dir=tmp_path / "registry", model_name="tiny-llama", model_path=tiny_model_dir
    )
    registry = Registry.from_settings(settings)
    assert (registry.root, registry.base_model) == (tmp_path / "registry", "tiny-llama")
    assert (
        registry.publish(adapter_dir, name="helpdesk", level="L2").ref == "helpdesk@1"
    )  # trained on the folder
