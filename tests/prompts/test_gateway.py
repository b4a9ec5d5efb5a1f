"""Templates through the HTTP API (fake engine): rendering never stalls the gateway, failures fall back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.config import Settings
from service.keys import KeyStore
from service.prompts import TemplateStore
from service.tenancy import TenantDirectory
from tests.api.helpers import assert_envelope
from tests.conftest import API_KEY
from tests.fakes import FakeEngine
from tests.prompts.attacks import RENDER_ONLY, SLOW, version
from tests.prompts.conftest import LIMIT, WriteTemplate

TENANTS = """
tenants:
  acme:
    variables: {company: ACME Corp}
    default_department: it
    departments:
      it: {template: acme/it}
      legal: {template: acme/legal}
  globex:
    departments:
      support: {template: globex/support}
"""
PROMPT = "You help {{ company }} ({{ department }})."


@dataclass
class Gateway:
    client: httpx.AsyncClient
    engine: FakeEngine
    store: TemplateStore
    keys: dict[str, str]  # tenant -> API key

    async def chat(self, tenant: str, department: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"}
        if department is not None:
            headers["X-Department"] = department
        body = {"model": self.engine.model_name, "messages": [{"role": "user", "content": "Hi"}]}
        return await self.client.post("/v1/chat/completions", json=body, headers=headers)

    def system_prompt(self) -> str:
        return self.engine.requests[-1].messages[0].content


@pytest.fixture
async def gateway(tmp_path: Path, prompts_root: Path, write: WriteTemplate) -> AsyncIterator[Gateway]:
    engine = FakeEngine()
    (tmp_path / "tenants.yaml").write_text(TENANTS)
    write("acme/legal", version("Legal help for {{ tenant }}.", "1"))
    write("globex/support", version("Support for {{ tenant }}.", "1"))
    settings = Settings(
        api_key=API_KEY,
        model_name=engine.model_name,
        tenants_file=tmp_path / "tenants.yaml",
        keys_file=tmp_path / "keys.json",
        prompts_dir=prompts_root,
        registry_dir=tmp_path / "registry",
        template_render_timeout=LIMIT,
    )
    store = KeyStore(settings.keys_file, TenantDirectory(settings.tenants_file, engine.model_name))
    keys = {tenant: store.create(tenant)[1] for tenant in ("acme", "globex")}
    app = create_app(settings, engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            templates = app.state.loragate.chat.planner.templates
            yield Gateway(client, engine, templates, keys)


async def timed(request: asyncio.Future[httpx.Response] | asyncio.Task[httpx.Response]) -> float:
    started = time.monotonic()
    await request
    return time.monotonic() - started


async def test_a_slow_template_stalls_no_one_else(gateway: Gateway, write: WriteTemplate) -> None:
    write("acme/it", version(PROMPT, "1"))
    assert (await gateway.chat("acme")).headers["x-loragate-template"] == "acme/it@1"
    await gateway.chat("globex")  # its prompt is rendered (and cached) before the slow render starts
    write("acme/it", version(SLOW))  # renders for the whole time limit, then is refused
    started = time.monotonic()
    slow = asyncio.create_task(gateway.chat("acme"))
    await asyncio.sleep(0.1)  # the slow render has started
    health = await timed(asyncio.ensure_future(gateway.client.get("/health")))
    other = await timed(asyncio.ensure_future(gateway.chat("globex")))
    assert not slow.done(), "the slow render is still running: the others were answered meanwhile"
    assert health < 0.3 and other < 0.3, f"/health took {health:.2f} s, another tenant {other:.2f} s"
    assert time.monotonic() - started < 0.1 + 0.3 + 0.3
    response = await slow
    assert time.monotonic() - started < 2 * LIMIT
    assert response.status_code == 200 and response.headers["x-loragate-template"] == "acme/it@1"
    assert gateway.system_prompt() == "You help ACME Corp (it)."


@pytest.mark.parametrize("name", sorted(RENDER_ONLY))
async def test_a_version_that_only_fails_when_rendered_falls_back(
    gateway: Gateway, write: WriteTemplate, name: str
) -> None:
    write("acme/it", version(PROMPT, "1"))
    assert (await gateway.chat("acme")).status_code == 200
    write("acme/it", version(RENDER_ONLY[name]))
    for _ in range(2):
        response = await gateway.chat("acme")
        assert response.status_code == 200 and response.headers["x-loragate-template"] == "acme/it@1"
        assert gateway.system_prompt() == "You help ACME Corp (it)."


@pytest.mark.parametrize("name", sorted(RENDER_ONLY))
async def test_with_no_version_that_renders_the_error_is_clean(
    gateway: Gateway, write: WriteTemplate, name: str
) -> None:
    write("acme/it", version(RENDER_ONLY[name]))
    response = await gateway.chat("acme")
    error = assert_envelope(response, 500)
    assert error["message"] == "This department's prompt template could not be rendered."
    for leak in ("__class__", "compnay", ".yaml", "acme/it", "Error"):
        assert leak not in response.text
    assert (await gateway.chat("acme", "legal")).status_code == 200, "only that department is affected"


async def test_a_prompt_over_the_size_limit_falls_back(gateway: Gateway, write: WriteTemplate) -> None:
    write("acme/it", version(PROMPT, "1"))
    await gateway.chat("acme")
    write("acme/it", version("{% for i in range(40) %}{{ 'x' * 1000 }}{% endfor %}"))  # 40000 > 32768
    response = await gateway.chat("acme")
    assert response.headers["x-loragate-template"] == "acme/it@1"


async def test_steady_state_requests_render_nothing(gateway: Gateway, write: WriteTemplate) -> None:
    write("acme/it", version(PROMPT, "1"))
    responses = await asyncio.gather(*(gateway.chat("acme") for _ in range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    renders = gateway.store.renders
    assert renders == 1
    for _ in range(3):
        assert (await gateway.chat("acme")).status_code == 200
    assert gateway.store.renders == renders
    assert gateway.system_prompt() == "You help ACME Corp (it)."
