"""Real vLLM in tests: two CPU vLLM replicas on a tiny float32 Llama, two adapters, gateways in front.

vLLM comes from the cached venv that ``make vllm`` builds (``.venv-vllm``, or ``$VLLM_PYTHON``).
Without it these tests are skipped on a workstation and fail under CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import Settings
from testkit.tiny_llama import write_tiny_llama
from tests.conftest import TINY_MODEL, LiveServer
from tests.vllm.servers import MAX_MODEL_LEN, VLLM_PYTHON, VllmServer, tiny_server
from tests.worlds import Deployment, build_deployment

TENANTS = """
tenants:
  acme:
    default_department: plain
    departments:
      plain: {}
      it: {adapter: acme-it}
      legal: {adapter: acme-legal}
"""


@pytest.fixture(scope="session", autouse=True)
def vllm_installed() -> None:
    if not VLLM_PYTHON.exists():
        message = f"vLLM is not installed at {VLLM_PYTHON}: run `make vllm`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """A 2-layer random Llama, float32, weights drawn wide (std 0.3) so adapters change the tokens.

    Head size 32: vLLM's CPU attention has no kernel for 16 (the other tiny models' size).
    8192 positions: room for a request long enough to be still running when a test cuts it.
    """
    path = tmp_path_factory.mktemp("vllm-tiny-llama")
    return write_tiny_llama(path, smollm2_dir, heads=2, kv_heads=1, std=0.3, positions=MAX_MODEL_LEN)


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory, vllm_model_dir: Path) -> Deployment:
    return build_deployment(
        tmp_path_factory.mktemp("vllm-world"),
        vllm_model_dir,
        tenants=TENANTS,
        templates={},
        adapters=[("acme-it", "acme-it", 1), ("acme-legal", "acme-legal", 2)],
        max_context=1024,
    )


@pytest.fixture(scope="session")
def acme_key(deployment: Deployment) -> str:
    return deployment.keys.create("acme", None)[1]


@pytest.fixture(scope="session")
def replicas(vllm_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[VllmServer]]:
    """Two vLLM replicas, started together (each takes 30-70 s on two cores)."""
    logs = tmp_path_factory.mktemp("vllm-logs")
    servers = [tiny_server(vllm_model_dir, logs).start() for _ in range(2)]
    try:
        for server in servers:
            server.wait_healthy()
        yield servers
    finally:
        for server in servers:
            server.stop()


def vllm_settings(base: Settings, replicas: list[VllmServer], **overrides: object) -> Settings:
    values = {"engine": "vllm", "upstream": [r.url for r in replicas], "health_interval": 0.5}
    return base.model_copy(update=values | overrides)


@pytest.fixture(scope="session")
def vllm_gateway(deployment: Deployment, replicas: list[VllmServer]) -> Iterator[LiveServer]:
    """The gateway with tenants, departments and the registry, in front of both replicas."""
    with LiveServer(vllm_settings(deployment.settings, replicas)) as server:
        yield server


@pytest.fixture(scope="session")
def embedded_gateway(deployment: Deployment) -> Iterator[LiveServer]:
    """The same deployment on the embedded engine (transformers + PEFT, float32): the reference."""
    with LiveServer(deployment.settings) as server:
        yield server


@pytest.fixture(scope="session")
def single_tenant_gateway(deployment: Deployment, replicas: list[VllmServer]) -> Iterator[LiveServer]:
    """Single-tenant mode (one API key, no departments), for the SDK contract tests."""
    settings = vllm_settings(deployment.settings, replicas, tenants_file=None, model_name=TINY_MODEL)
    with LiveServer(settings) as server:
        yield server
