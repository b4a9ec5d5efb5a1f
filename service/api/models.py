"""GET /v1/models in the OpenAI list format: only what the caller's key may use.

Adapter aliases that the tenants file allows but the registry does not (yet) hold are left out.
"""

from __future__ import annotations

from ..protocol import ModelCard, ModelList
from .pipeline import Answer, ApiRoute, Call


async def list_models(call: Call, _: None) -> Answer:
    state = call.state
    base = state.settings.model_name
    published = state.registry.aliases()
    cards = []
    for name in state.tenancy.visible_models(call.principal):
        if name != base and name not in published:
            continue
        parent = None if name == base else base
        cards.append(ModelCard(id=name, created=state.created, root=base, parent=parent))
    return Answer(json=ModelList(data=cards).model_dump(mode="json"))


ROUTE = ApiRoute("GET", "/v1/models", list_models, response=ModelList, summary="List Models", tag="models")
