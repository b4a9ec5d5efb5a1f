"""Publish into an s3:// registry, list it, and sync a version into a gateway's cache once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.registry import VersionExists
from service.registry_store_s3 import S3Store, parse_s3_url

from .conftest import OpenRegistry


def objects(s3: Any, url: str) -> list[str]:
    bucket, prefix = parse_s3_url(url)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"][len(prefix) :] for o in listed)


def test_the_bucket_holds_the_folder_layout(
    open_registry: OpenRegistry, adapter_dirs: list[Path], s3: Any, s3_url: str
) -> None:
    publisher = open_registry("factory")
    assert publisher.publish(adapter_dirs[0], name="helpdesk", level="L2").ref == "helpdesk@1"
    assert publisher.publish(adapter_dirs[1], name="helpdesk", level="L3").ref == "helpdesk@2"
    publisher.promote("it", "helpdesk@1")
    assert objects(s3, s3_url) == [
        "adapters/helpdesk/1/adapter_config.json",
        "adapters/helpdesk/1/adapter_model.safetensors",
        "adapters/helpdesk/1/manifest.json",
        "adapters/helpdesk/2/adapter_config.json",
        "adapters/helpdesk/2/adapter_model.safetensors",
        "adapters/helpdesk/2/manifest.json",
        "aliases.json",
    ]
    bucket, prefix = parse_s3_url(s3_url)
    manifest = json.loads(
        s3.get_object(Bucket=bucket, Key=f"{prefix}adapters/helpdesk/2/manifest.json")["Body"].read()
    )
    assert manifest["level"] == "L3" and set(manifest["files"]) == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    assert manifest["files"]["adapter_model.safetensors"] == manifest["sha256"]

    gateway = open_registry("gateway-a")
    assert gateway.names() == ["helpdesk"]
    assert [(a.ref, a.manifest.level) for a in gateway.versions("helpdesk")] == [
        ("helpdesk@1", "L2"),
        ("helpdesk@2", "L3"),
    ]
    assert gateway.aliases() == {"it": "helpdesk@1"}


def test_a_version_is_synced_once_then_served_from_the_cache(
    open_registry: OpenRegistry, adapter_dirs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_registry("factory").publish(adapter_dirs[0], name="helpdesk", level="L2")
    downloads: list[str] = []
    real_fetch = S3Store._fetch

    def counted(self: S3Store, key: str, path: Path, ref: str) -> tuple[str, int]:
        downloads.append(key.rsplit("/", 1)[-1])
        return real_fetch(self, key, path, ref)

    monkeypatch.setattr(S3Store, "_fetch", counted)
    gateway = open_registry("gateway-a")
    adapter = gateway.load("helpdesk", 1)
    assert adapter.path == tmp_path / "gateway-a" / "helpdesk" / "1"
    assert sorted(p.name for p in adapter.path.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "manifest.json"
    ]  # fmt: skip
    assert (adapter.path / "adapter_model.safetensors").read_bytes() == (
        adapter_dirs[0] / "adapter_model.safetensors"
    ).read_bytes()
    assert not [p for p in adapter.path.parent.iterdir() if p.name.endswith(".partial")]
    for _ in range(3):
        assert gateway.load("helpdesk", 1) == adapter
    assert open_registry("gateway-a").load("helpdesk", 1).path == adapter.path  # a restart: same cache
    assert downloads == ["adapter_config.json", "adapter_model.safetensors"]  # once, for all of them


def test_versions_are_immutable_and_concurrent_publishes_get_distinct_numbers(
    open_registry: OpenRegistry, adapter_dirs: list[Path]
) -> None:
    first, second = open_registry("factory-1"), open_registry("factory-2")
    first.publish(adapter_dirs[0], name="helpdesk", level="L2")
    with pytest.raises(VersionExists, match="immutable"):
        second.publish(adapter_dirs[1], name="helpdesk", level="L2", version=1)
    # the second publisher raced for number 2 as well: it lost the claim and took 3
    first.publish(adapter_dirs[0], name="helpdesk", level="L2")
    real, listings = second.store.version_numbers, iter([[1]])  # its first listing was made before 2 landed
    second.store.version_numbers = lambda name: next(listings, None) or real(name)  # type: ignore[method-assign]
    assert second.publish(adapter_dirs[1], name="helpdesk", level="L2").ref == "helpdesk@3"
    assert [a.manifest.sha256 for a in second.versions("helpdesk")] == [
        first.load("helpdesk", 1).manifest.sha256,
        first.load("helpdesk", 1).manifest.sha256,
        second.load("helpdesk", 3).manifest.sha256,
    ]
