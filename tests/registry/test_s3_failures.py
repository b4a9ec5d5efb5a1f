"""What goes wrong with object storage gives a clear error, and nothing half-synced is served."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from service.admin import operations
from service.errors import EngineUnavailableError
from service.registry import AdapterRejected, Registry, RegistryUnavailable
from service.registry_store_s3 import S3Store, parse_s3_url

from ..conftest import TINY_MODEL
from .conftest import OpenRegistry
from .s3_server import MotoServer


def key_of(url: str, *parts: str) -> tuple[str, str]:
    bucket, prefix = parse_s3_url(url)
    return bucket, prefix + "/".join(parts)


def test_a_corrupted_object_is_refused_and_not_cached(
    open_registry: OpenRegistry, adapter_dirs: list[Path], s3: Any, s3_url: str, tmp_path: Path
) -> None:
    open_registry("factory").publish(adapter_dirs[0], name="helpdesk", level="L2")
    bucket, key = key_of(s3_url, "adapters", "helpdesk", "1", "adapter_model.safetensors")
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[-1] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    gateway = open_registry("gateway")
    with pytest.raises(AdapterRejected, match=r"helpdesk@1: adapter_model.safetensors .* does not match"):
        gateway.load("helpdesk", 1)
    assert list((tmp_path / "gateway" / "helpdesk").iterdir()) == []  # no folder, no partial download


def test_a_missing_object_or_version_names_what_is_missing(
    open_registry: OpenRegistry, adapter_dirs: list[Path], s3: Any, s3_url: str
) -> None:
    open_registry("factory").publish(adapter_dirs[0], name="helpdesk", level="L2")
    bucket, key = key_of(s3_url, "adapters", "helpdesk", "1", "adapter_config.json")
    s3.delete_object(Bucket=bucket, Key=key)
    gateway = open_registry("gateway")
    with pytest.raises(AdapterRejected, match=r"adapter_config.json is missing from s3://"):
        gateway.load("helpdesk", 1)
    with pytest.raises(AdapterRejected, match=r"no adapter helpdesk@9 in the registry s3://"):
        gateway.load("helpdesk", 9)
    with pytest.raises(AdapterRejected, match="no adapter"):
        gateway.load("../../etc", 1)  # never a path outside the cache


def test_a_broken_aliases_object_raises_until_it_is_fixed(
    open_registry: OpenRegistry, s3: Any, s3_url: str
) -> None:
    bucket, key = key_of(s3_url, "aliases.json")
    s3.put_object(Bucket=bucket, Key=key, Body=b"{not json")
    gateway = open_registry("gateway", ttl=0)
    for _ in range(2):
        with pytest.raises(AdapterRejected, match=r"aliases.json cannot be read"):
            gateway.aliases()
    s3.put_object(Bucket=bucket, Key=key, Body=b'{"aliases": {"it": {"current": "helpdesk@1"}}}')
    assert gateway.aliases() == {"it": "helpdesk@1"}


def test_an_outage_keeps_the_last_aliases_and_refuses_new_syncs_clearly(
    adapter_dirs: list[Path],
    tmp_path: Path,
    tiny_model_dir: Path,
    aws_env: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import boto3

    server = MotoServer(tmp_path / "moto.log").start()  # its own server: this test stops it
    try:
        boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="outage")
        store = S3Store("s3://outage", tmp_path / "cache", endpoint_url=server.endpoint, alias_ttl=0)
        gateway = Registry(store, TINY_MODEL, base_aliases=(str(tiny_model_dir),))
        gateway.publish(adapter_dirs[0], name="helpdesk", level="L2")
        factory = S3Store("s3://outage", tmp_path / "factory", endpoint_url=server.endpoint)
        Registry(factory, TINY_MODEL, base_aliases=(str(tiny_model_dir),)).publish(
            adapter_dirs[1], name="helpdesk", level="L2"
        )  # published elsewhere: this gateway has not synced it
        gateway.promote("it", "helpdesk@1")
        assert gateway.resolve("it").ref == "helpdesk@1"
    finally:
        server.stop()
    with caplog.at_level(logging.WARNING, "loragate.registry"):
        assert gateway.resolve("it").ref == "helpdesk@1"  # synced, and the aliases read before
    assert "serving the aliases read" in caplog.text
    with pytest.raises(
        RegistryUnavailable, match=r"s3://outage: reading helpdesk@2.s manifest failed: Could not connect"
    ):
        gateway.load("helpdesk", 2)
    with pytest.raises(EngineUnavailableError) as refused:
        operations.list_adapters(gateway)
    assert (refused.value.status_code, refused.value.code) == (503, "registry_unavailable")
    cold = Registry(S3Store("s3://outage", tmp_path / "c2", endpoint_url=server.endpoint), TINY_MODEL)
    with pytest.raises(RegistryUnavailable, match="reading the aliases failed"):
        cold.resolve("it")
