"""Two tenants, departments, registry adapters and templates: labels, adapter and template events."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings
from tests.conftest import TINY_MODEL, wait_ready
from tests.departments.conftest import TEMPLATES, TENANTS
from tests.fakes import FakeEngine
from tests.worlds import build_deployment

from .fake_nvml import FakeNvml
from .helpers import CHAT_URL, Scrape, scrape

ACME_IT = {"tenant": "acme", "department": "ops", "adapter": "acme-it-lora@1"}
GLOBEX = {"tenant": "globex", "department": "sales", "adapter": "globex-lora@1"}


@dataclass
class World:
    settings: Settings
    keys: dict[str, str]  # tenant -> API key


@pytest.fixture(scope="module")
def world(wide_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    deployment = build_deployment(
        tmp_path_factory.mktemp("metrics-world"),
        wide_model_dir,
        tenants=TENANTS,
        templates=TEMPLATES,
        adapters=[("acme-it", "acme-it-lora", 1), ("globex-sales", "globex-lora", 3)],
        max_loaded_adapters=1,  # every switch of adapter evicts the other
    )
    keys = {tenant: deployment.keys.create(tenant)[1] for tenant in ("acme", "globex")}
    return World(deployment.settings, keys)


def headers(world: World, tenant: str, department: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.keys[tenant]}"} | (
        {"X-Department": department} if department else {}
    )


def body(model: str = TINY_MODEL) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}


@pytest.fixture(scope="module")
async def real(world: World) -> AsyncIterator[httpx.AsyncClient]:
    """The embedded engine on the wide tiny model."""
    app = create_app(world.settings, nvml=FakeNvml([], driver=False))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            await wait_ready(client)
            yield client


async def test_adapter_loads_evictions_and_queue_time_on_the_real_engine(
    world: World, real: httpx.AsyncClient
) -> None:
    before = await scrape(real)
    for tenant, department in (("acme", "ops"), ("globex", None), ("acme", "ops")):
        response = await real.post(CHAT_URL, json=body(), headers=headers(world, tenant, department))
        assert response.status_code == 200, response.text
    out = await scrape(real)

    def grew(name: str, **labels: str) -> float:
        return out.sum(name, **labels) - before.sum(name, **labels)

    assert grew("loragate_adapter_loads_total", adapter="acme-it-lora@1") == 2
    assert grew("loragate_adapter_loads_total", adapter="globex-lora@1") == 1
    assert grew("loragate_adapter_evictions_total", adapter="acme-it-lora@1") == 1
    assert grew("loragate_adapter_evictions_total", adapter="globex-lora@1") == 1
    assert grew("loragate_adapter_load_seconds_count") == 3 and grew("loragate_adapter_load_seconds_sum") > 0
    assert grew("loragate_requests_total", **ACME_IT, status="200") == 2
    assert grew("loragate_requests_total", **GLOBEX, status="200") == 1
    assert grew("loragate_completion_tokens_total", **GLOBEX) == 2
    assert grew("loragate_queue_time_seconds_count", **ACME_IT) == 2
    assert grew("loragate_queue_time_seconds_count", **GLOBEX) == 1
    assert out.get("loragate_build_info", version="0.1.0", engine="local", model=TINY_MODEL) == 1
    for _ in range(100):  # the worker drops a finished row just after its last delta went out
        out = await scrape(real)
        if out.get("loragate_engine_batch_size") == 0:
            break
        await asyncio.sleep(0.01)
    assert out.get("loragate_engine_batch_size") == 0 and out.get("loragate_engine_queue_depth") == 0


@pytest.fixture
async def fake_world(world: World, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    """The world on the fake engine, with its own copy of the templates (the test edits them)."""
    prompts = tmp_path / "prompts"
    shutil.copytree(world.settings.prompts_dir, prompts)
    settings = world.settings.model_copy(update={"prompts_dir": prompts})
    engine = FakeEngine(model_name=TINY_MODEL)
    app: FastAPI = create_app(settings, lambda _: engine, nvml=FakeNvml([], driver=False))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            yield client, prompts


async def test_labels_are_configuration_values_only(
    world: World, fake_world: tuple[httpx.AsyncClient, Path]
) -> None:
    gateway, _ = fake_world
    sent = [
        (headers(world, "acme", "ops"), body(), 200),
        (headers(world, "acme", "plain"), body(), 200),
        (headers(world, "globex"), body(), 200),
        (headers(world, "acme", "evil-value-123"), body(), 404),
        (headers(world, "acme"), body("bogus-model"), 404),
        (headers(world, "globex", "it"), body(), 403),  # acme's department
        (headers(world, "acme"), body("globex-sales"), 403),  # globex's adapter
    ]
    for request_headers, request_body, status in sent:
        assert (
            await gateway.post(CHAT_URL, json=request_body, headers=request_headers)
        ).status_code == status
    out = await scrape(gateway)
    assert out.get("loragate_requests_total", **ACME_IT, status="200") == 1
    assert out.get("loragate_requests_total", **GLOBEX, status="200") == 1
    assert (
        out.get("loragate_requests_total", tenant="acme", department="plain", adapter="base", status="200")
        == 1
    )
    acme, globex = {"tenant": "acme", "department": "unknown", "adapter": "unknown"}, {"tenant": "globex"}
    assert out.get("loragate_requests_total", **acme, status="404") == 2
    assert out.get("loragate_errors_total", **acme, type="permission_denied") == 1
    assert (
        out.get(
            "loragate_errors_total",
            **globex,
            department="unknown",
            adapter="unknown",
            type="permission_denied",
        )
        == 1
    )
    assert out.sum("loragate_requests_total") == len(sent)
    assert out.sum("loragate_requests_in_flight") == 0
    allowed = {
        "acme",
        "globex",
        "ops",
        "plain",
        "sales",
        "it",
        "acme-it-lora@1",
        "globex-lora@1",
        "base",
        "unknown",
    }
    route_values = {
        v
        for (name, labels) in out.samples
        if name.startswith("loragate_")
        for k, v in labels
        if k in ("tenant", "department", "adapter")
    }
    assert route_values <= allowed
    for client_value in ("evil-value-123", "bogus-model", "globex-sales"):
        assert client_value not in out.text


def reloads(out: Scrape) -> tuple[float | None, float | None]:
    return out.get("loragate_template_reloads_total", template="acme/it"), out.get(
        "loragate_template_failures_total", template="acme/it"
    )


async def test_template_reloads_and_failures(
    world: World, fake_world: tuple[httpx.AsyncClient, Path]
) -> None:
    gateway, prompts = fake_world
    template = prompts / "acme" / "it.yaml"

    async def ask() -> int:
        return (await gateway.post(CHAT_URL, json=body(), headers=headers(world, "acme", "it"))).status_code

    assert reloads(await scrape(gateway)) == (None, None), "nothing loaded before the first request"
    assert await ask() == 200
    assert reloads(await scrape(gateway)) == (1, None)
    template.write_text("version: [unclosed\n")
    assert await ask() == 200, "the last good version keeps serving"
    assert await ask() == 200
    assert reloads(await scrape(gateway)) == (1, 1), "a refused version counts once"
    template.write_text('version: "2"\nsystem: "Hello from {{ tenant }}, version two."\n')
    assert await ask() == 200
    assert reloads(await scrape(gateway)) == (2, 1)
    template.write_text('version: "3"\nsystem: "{{ no_such_variable }}"\n')
    assert await ask() == 200  # loads, cannot render: version 2 keeps serving
    assert reloads(await scrape(gateway)) == (3, 2)
