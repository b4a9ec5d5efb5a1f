"""Tenancy through the HTTP API: model lists, isolation, template headers, hidden reasoning, the SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from service.app import create_app

from ..conftest import TINY_MODEL, LiveServer
from ..fakes import FakeEngine
from .conftest import World
from .test_adapters_served import auth, body


async def test_models_lists_only_what_the_key_may_use(world: World, gateway: httpx.AsyncClient) -> None:
    for who, adapters in (("acme", ["acme-it"]), ("globex", ["globex-sales"])):
        data = (await gateway.get("/v1/models", headers=auth(world, who))).json()["data"]
        assert [m["id"] for m in data] == [TINY_MODEL, *adapters]
        assert [m["parent"] for m in data] == [None] + [TINY_MODEL] * len(adapters)


@pytest.mark.parametrize(
    ("who", "department", "model", "status"),
    [
        ("acme", "sales", TINY_MODEL, 403),  # globex's department
        ("acme", "nowhere", TINY_MODEL, 404),
        ("acme", None, "globex-sales", 403),  # globex's adapter
        ("acme", None, "no-such-model", 404),
        ("globex", "it", TINY_MODEL, 403),
        ("globex", None, "acme-it", 403),
        ("acme-legal-pinned", "it", TINY_MODEL, 403),  # pinned key, other department
    ],
)
async def test_isolation(world, gateway, who: str, department: str | None, model: str, status: int) -> None:
    response = await gateway.post(
        "/v1/chat/completions", json=body() | {"model": model}, headers=auth(world, who, department)
    )
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    assert "globex" not in message.replace("globex-sales", "") or who == "globex"
    assert "acme" not in message.replace("acme-it", "") or who.startswith("acme")


async def test_pinned_key_gets_its_department_and_template(world: World, gateway: httpx.AsyncClient) -> None:
    response = await gateway.post(
        "/v1/chat/completions", json=body(), headers=auth(world, "acme-legal-pinned")
    )
    assert response.status_code == 200
    assert response.headers["x-loragate-department"] == "legal"
    assert response.headers["x-loragate-template"] == "acme/legal@2"
    assert response.headers["x-loragate-adapter"] == "base"


@pytest.fixture
async def fake_gateway(world: World) -> AsyncIterator[tuple[httpx.AsyncClient, FakeEngine]]:
    fake = FakeEngine(
        model_name=TINY_MODEL, script=("First, think. ", "The clause is", " fine.\nAns", "wer: ", "Low risk.")
    )
    app = create_app(world.settings, engine_factory=lambda _: fake)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g") as client:
            yield client, fake


@pytest.mark.parametrize("stream", [False, True])
async def test_hidden_reasoning_never_reaches_the_client(world, fake_gateway, stream: bool) -> None:
    client, fake = fake_gateway
    request = body() | {"stream": stream}
    response = await client.post("/v1/chat/completions", json=request, headers=auth(world, "acme", "legal"))
    assert response.status_code == 200
    if stream:
        chunks = [line for line in response.text.splitlines() if '"content"' in line]
        content = "".join(
            __import__("json").loads(c.removeprefix("data: "))["choices"][0]["delta"]["content"]
            for c in chunks
        )
    else:
        content = response.json()["choices"][0]["message"]["content"]
    assert content == "Low risk."
    sent = fake.requests[-1].messages
    assert sent[0].role == "system" and sent[0].content.startswith("You review contracts for acme.")


async def test_template_puts_tenant_system_prompt_and_few_shot_first(world, fake_gateway) -> None:
    client, fake = fake_gateway
    request = body() | {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    }
    response = await client.post("/v1/chat/completions", json=request, headers=auth(world, "acme", "it"))
    assert response.headers["x-loragate-template"] == "acme/it@1"
    roles = [m.role for m in fake.requests[-1].messages]
    assert roles == ["system", "user", "assistant", "user"]
    system = fake.requests[-1].messages[0].content
    assert system.index("You are the it assistant of acme.") < system.index("Be brief.")


def test_openai_sdk_with_a_department_header(world: World) -> None:
    with LiveServer(world.settings) as server:
        client = openai.OpenAI(
            base_url=server.base_url, api_key=world.keys["acme"], default_headers={"X-Department": "ops"}
        )
        raw = client.chat.completions.with_raw_response.create(
            model=TINY_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
        )
        assert raw.headers["x-loragate-adapter"] == "acme-it-lora@1"
        assert raw.parse().choices[0].message.content is not None
        assert [m.id for m in client.models.list().data] == [TINY_MODEL, "acme-it"]
        with pytest.raises(openai.PermissionDeniedError):
            client.with_options(default_headers={"X-Department": "sales"}).chat.completions.create(
                model=TINY_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
