"""Two tenants, three departments, adapters in a registry and templates on disk, on the wide tiny model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings
from service.registry import Registry

from ..conftest import wait_ready
from ..worlds import build_deployment

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
    deployment = build_deployment(
        tmp_path_factory.mktemp("departments"),
        wide_model_dir,
        tenants=TENANTS,
        templates=TEMPLATES,
        adapters=[
            ("acme-it", "acme-it-lora", 1),
            (None, "acme-it-lora", 2),
            ("globex-sales", "globex-lora", 3),
        ],
        max_loaded_adapters=2,
    )
    store = deployment.keys
    keys = {
        "acme": store.create("acme")[1],
        "acme-legal-pinned": store.create("acme", "legal")[1],
        "globex": store.create("globex")[1],
    }
    return World(deployment.settings, deployment.registry, keys, deployment.adapters)


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
