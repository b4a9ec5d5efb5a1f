"""Registry fixtures: a real S3 API server (moto's server mode), one fresh bucket per test, adapters.

Without ``moto_server`` (the ``moto[server]`` package) the S3 cases are skipped on a workstation and
fail under CI.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.registry import Registry
from service.registry_store_s3 import ALIAS_TTL, S3Store

from ..conftest import TINY_MODEL
from ..demo_adapters import make_adapter
from .s3_server import CREDENTIALS, MOTO_SERVER, MotoServer

OpenRegistry = Callable[..., Registry]


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    if MOTO_SERVER is None:
        reason = "moto_server not found: pip install 'moto[server]'"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = MotoServer(tmp_path_factory.mktemp("moto") / "log").start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials and region through boto3's standard chain, as a deployment gives them."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3(moto: MotoServer, aws_env: None) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=moto.endpoint)


@pytest.fixture
def s3_url(s3: Any) -> str:
    """An empty registry: a new bucket, with the registry under a prefix."""
    bucket = f"registry-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/teams/loragate"


@pytest.fixture(scope="package")
def adapter_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two trained adapters (different weights) on the tiny model."""
    root = tmp_path_factory.mktemp("trained")
    return [make_adapter(tiny_model_dir, root / f"lora-{seed}", seed=seed) for seed in (1, 2)]


@pytest.fixture
def open_registry(moto: MotoServer, tiny_model_dir: Path, tmp_path: Path, s3_url: str) -> OpenRegistry:
    """``open_registry(cache="a", ttl=...)``: one gateway's view of the test's bucket, with its own cache."""

    def make(cache: str = "gateway-a", ttl: float = ALIAS_TTL, url: str = s3_url) -> Registry:
        store = S3Store(url, tmp_path / cache, endpoint_url=moto.endpoint, alias_ttl=ttl)
        return Registry(store, TINY_MODEL, base_aliases=(str(tiny_model_dir),))

    return make
