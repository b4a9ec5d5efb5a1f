"""GET /v1/models/{model} through the openai SDK: the list's visibility, one card at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from service.app import create_app
from service.config import Settings
from tests.api.helpers import assert_envelope
from tests.conftest import API_KEY, TINY_MODEL, LiveServer
from tests.fakes import FakeEngine
from tests.worlds import build_deployment

TENANTS = """
tenants:
  acme:
    adapters: [acme-unpublished]  # allowed, but not in the registry
    departments:
      it: {adapter: acme-it}
  globex:
    departments:
      sales: {adapter: globex-sales}
"""


def sdk(base_url: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def tenants(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[dict[str, openai.OpenAI]]:
    """The SDK for each tenant, on a live server (fake engine) with two tenants' adapters."""
    deployment = build_deployment(
        tmp_path_factory.mktemp("model-cards"),
        tiny_model_dir,
        tenants=TENANTS,
        templates={},
        adapters=[("acme-it", "acme-it-lora", 1), ("globex-sales", "globex-lora", 2)],
    )
    keys = {who: deployment.keys.create(who)[1] for who in ("acme", "globex")}
    app = create_app(deployment.settings, engine_factory=lambda _: FakeEngine(model_name=TINY_MODEL))
    with LiveServer(app=app, ready_path="/health") as server:
        yield {who: sdk(server.base_url, key) for who, key in keys.items()}


@pytest.mark.parametrize(
    ("who", "model", "parent"), [("acme", TINY_MODEL, None), ("acme", "acme-it", TINY_MODEL)]
)
def test_a_visible_model(tenants: dict[str, openai.OpenAI], who: str, model: str, parent: str | None) -> None:
    card = tenants[who].models.retrieve(model)
    assert (card.id, card.object, card.owned_by) == (model, "model", "loragate")
    assert card.model_dump()["parent"] == parent and card.model_dump()["root"] == TINY_MODEL
    assert card in tenants[who].models.list().data  # the same card as in the list


@pytest.mark.parametrize(
    ("who", "model"),
    [
        ("acme", "globex-sales"),  # another tenant's: reads as unknown, not as forbidden
        ("globex", "acme-it"),
        ("acme", "acme-unpublished"),  # allowed but not published: not in the list either
        ("acme", "no-such-model"),
        ("acme", "org/no-such-model"),  # the id is the rest of the path, "/" included
    ],
)
def test_an_invisible_or_unknown_model_is_404(
    tenants: dict[str, openai.OpenAI], who: str, model: str
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        tenants[who].models.retrieve(model)
    assert (caught.value.code, caught.value.param) == ("model_not_found", "model")
    message = caught.value.message
    assert model in message  # the name the client sent, whole
    other = "globex" if who == "acme" else "acme"
    assert other not in message.replace(model, ""), "never names another tenant"


def test_every_listed_model_can_be_retrieved(tenants: dict[str, openai.OpenAI]) -> None:
    for client in tenants.values():
        listed = client.models.list().data
        assert [client.models.retrieve(card.id) for card in listed] == listed


@pytest.fixture(scope="module")
def slashed() -> Iterator[LiveServer]:
    """A base model named as on the Hugging Face hub, owner/name."""
    engine = FakeEngine(model_name="HuggingFaceTB/SmolLM2-135M-Instruct")
    settings = Settings(api_key=API_KEY, model_name=engine.model_name)
    with LiveServer(
        app=create_app(settings, engine_factory=lambda _: engine), ready_path="/health"
    ) as server:
        yield server


def test_an_id_with_a_slash(slashed: LiveServer) -> None:
    client = sdk(slashed.base_url, API_KEY)
    card = client.models.retrieve("HuggingFaceTB/SmolLM2-135M-Instruct")  # sent as HuggingFaceTB%2FSmolLM2...
    assert card.id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    plain = httpx.get(f"{slashed.base_url}/models/HuggingFaceTB/SmolLM2-135M-Instruct", headers=auth())
    assert plain.status_code == 200 and plain.json() == card.model_dump(exclude_unset=True)


def auth(key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code"),
    [
        ("GET", "/v1/models/x", {}, 401, "invalid_api_key"),
        ("GET", "/v1/models/x", auth("sk-wrong"), 401, "invalid_api_key"),
        ("POST", "/v1/models/x", auth(), 405, "method_not_allowed"),
        ("GET", "/v1/models/", auth(), 404, "unknown_url"),
    ],
)
def test_the_pipeline_s_checks(
    slashed: LiveServer, method: str, path: str, headers: dict[str, Any], status: int, code: str
) -> None:
    response = httpx.request(method, slashed.base_url.removesuffix("/v1") + path, headers=headers)
    assert_envelope(response, status, code=code)
