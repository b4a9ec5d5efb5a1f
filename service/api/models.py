"""GET /v1/models in the OpenAI list format, and GET /v1/models/{model}: only what the caller's key may use.

Adapter aliases that the tenants file allows but the registry does not (yet) hold are left out.
The embedding model, when one is configured, comes last: every key may use it. A model the key
may not see reads as one that does not exist (404 ``model_not_found``): the answer never tells
which aliases other tenants have.
"""

from __future__ import annotations

import asyncio
import logging

from ..errors import ModelNotFoundError, quoted
from ..protocol import ModelCard, ModelList
from ..registry_store import RegistryUnavailable
from ..state import AppState
from ..tenancy import Principal
from .pipeline import Answer, ApiRoute, Call

log = logging.getLogger(__name__)


async def published_aliases(state: AppState) -> dict[str, str]:
    """The registry's aliases; read in a worker thread when that means a trip to object storage.
    An unreachable registry lists no adapters (the base model stays listed) rather than failing."""
    registry = state.registry
    try:
        if registry.store.aliases_are_fresh():
            return registry.aliases()
        return await asyncio.to_thread(registry.aliases)
    except RegistryUnavailable as exc:
        log.warning("/v1/models lists no adapters: %s", exc.message)
        return {}


def visible_cards(state: AppState, principal: Principal, published: dict[str, str]) -> list[ModelCard]:
    base = state.settings.model_name
    cards = []
    for name in state.tenancy.visible_models(principal):
        if name != base and name not in published:
            continue
        parent = None if name == base else base
        cards.append(ModelCard(id=name, created=state.created, root=base, parent=parent))
    embedding = state.embeddings.model_name
    if embedding is not None and all(card.id != embedding for card in cards):
        cards.append(ModelCard(id=embedding, created=state.created, root=embedding))
    return cards


async def list_models(call: Call, _: None) -> Answer:
    cards = visible_cards(call.state, call.principal, await published_aliases(call.state))
    return Answer(json=ModelList(data=cards).model_dump(mode="json"))


async def retrieve_model(call: Call, _: None) -> Answer:
    model = call.path_params["model"]
    for card in visible_cards(call.state, call.principal, await published_aliases(call.state)):
        if card.id == model:
            return Answer(json=card.model_dump(mode="json"))
    raise ModelNotFoundError(
        f"The model {quoted(model)} does not exist or you do not have access to it.", param="model"
    )


ROUTE = ApiRoute("GET", "/v1/models", list_models, response=ModelList, summary="List Models", tag="models")
# The id is the rest of the path, "/" included (the SDK sends it percent-encoded; the server decodes it).
RETRIEVE = ApiRoute(
    "GET", "/v1/models/{model}", retrieve_model, response=ModelCard, summary="Retrieve Model", tag="models"
)
