"""Adapters from the factory (TRL SFT, then DPO; r=16 on every linear layer), published, served by
vLLM with the same greedy tokens as the embedded engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.cli import run_step
from adapters.publish import publish, registry_for
from service.keys import KeyStore
from service.tenancy import TenantDirectory
from tests.adapters.conftest import tiny_recipe
from tests.conftest import TINY_MODEL, LiveServer, make_settings
from tests.vllm.conftest import vllm_settings
from tests.vllm.servers import VllmServer
from tests.vllm.test_parity import PROMPTS, greedy

pytestmark = pytest.mark.vllm

TENANTS = """
tenants:
  acme:
    default_department: l2
    departments:
      l2: {adapter: factory-l2}
      l3: {adapter: factory-l3}
"""


@pytest.fixture(scope="module")
def factory_world(vllm_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """SFT and DPO a few steps each on the vLLM test model, published as two aliases."""
    root = tmp_path_factory.mktemp("factory-on-vllm")
    recipe = tiny_recipe(vllm_model_dir, root, "publish.l3=dpo")
    for step in ("sft", "reward", "dpo", "eval"):
        run_step(recipe, step)
    for level, alias in (("L2", "factory-l2"), ("L3", "factory-l3")):
        adapter = publish(recipe, level, model_name=TINY_MODEL)
        registry_for(recipe, TINY_MODEL).promote(alias, adapter.ref)
    (root / "tenants.yaml").write_text(TENANTS)
    key = KeyStore(root / "keys.json", TenantDirectory(root / "tenants.yaml", TINY_MODEL)).create("acme")[1]
    return root, key


@pytest.fixture(scope="module")
def gateways(
    factory_world: tuple[Path, str], vllm_model_dir: Path, replicas: list[VllmServer]
) -> Iterator[tuple[LiveServer, LiveServer]]:
    root, _ = factory_world
    settings = make_settings(
        vllm_model_dir,
        tenants_file=root / "tenants.yaml",
        keys_file=root / "keys.json",
        registry_dir=root / "registry",
        prompts_dir=root,
        max_context=1024,
    )
    with LiveServer(settings) as embedded, LiveServer(vllm_settings(settings, replicas)) as on_vllm:
        yield embedded, on_vllm


@pytest.mark.parametrize("department", ["l2", "l3"])
def test_published_factory_adapters_give_the_same_tokens_on_vllm(
    gateways: tuple[LiveServer, LiveServer], factory_world: tuple[Path, str], department: str
) -> None:
    embedded, on_vllm = gateways
    key = factory_world[1]
    for prompt in PROMPTS:
        assert greedy(on_vllm, key, department, prompt) == greedy(embedded, key, department, prompt), prompt
