"""Two tenants, three departments, adapters in a registry and templates on disk, on the wide tiny model."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings
from service.keys import KeyStore
from service.registry import Registry
from service.tenancy import TenantDirectory

from ..conftest import TINY_MODEL, make_settings, wait_ready
from ..demo_adapters import make_adapter

TENANTS = """
tenants:
  acme:
    default_department: it
    max_tokens: 24
    adapters: [acme-unpublished]  # allowed, but not in the registry: not listed
    departments:
      it: {adapter: acme-it, template: acme/it}
      ops: {adapter: acme-it}
      legal: {template: acme/legal}
      plain: {}
  globex:
    departments:
      sales: {adapter: globex-sales}
"""

TEMPLATES = {
    "acme/it.yaml": """
        version: "1"
        system: "You are the {{ department }} assistant of {{ tenant }}."
        few_shot:
          - user: "My screen is black."
            assistant: "1. Check the power cable."
    """,
    "acme/legal.yaml": """
        version: "2"
        cot: hidden
        system: "You review contracts for {{ tenant }}."
    """,
}


@dataclass
class World:
    settings: Settings
    registry: Registry
    keys: dict[str, str]  # who -> API key
    adapters: dict[str, Path]  # name@version -> folder


@pytest.fixture(scope="package")
def world(wide_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("departments")
    (root / "tenants.yaml").write_text(TENANTS)
    for name, text in TEMPLATES.items():
        path = root / "prompts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    registry = Registry(root / "registry", TINY_MODEL, base_aliases=(str(wide_model_dir),))
    adapters = {}
    for name, seed in (("acme-it-lora", 1), ("acme-it-lora", 2), ("globex-lora", 3)):
        folder = make_adapter(wide_model_dir, root / "trained" / f"{name}-{seed}", seed=seed)
        adapter = registry.publish(folder, name=name, level="L2")
        adapters[adapter.ref] = adapter.path
    registry.promote("acme-it", "acme-it-lora@1")
    registry.promote("globex-sales", "globex-lora@1")
    settings = make_settings(
        wide_model_dir,
        tenants_file=root / "tenants.yaml",
        keys_file=root / "keys.json",
        prompts_dir=root / "prompts",
        registry_dir=root / "registry",
        max_loaded_adapters=2,
    )
    store = KeyStore(settings.keys_file, TenantDirectory(settings.tenants_file, TINY_MODEL))
    keys = {
        "acme": store.create("acme")[1],
        "acme-legal-pinned": store.create("acme", "legal")[1],
        "globex": store.create("globex")[1],
    }
    return World(settings, registry, keys, adapters)


@pytest.fixture(scope="package")
async def dept_app(world: World) -> AsyncIterator[FastAPI]:
    application = create_app(world.settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="package")
async def gateway(dept_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=dept_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        await wait_ready(client)
        yield client
