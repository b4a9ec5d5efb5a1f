"""GET /v1/models in the OpenAI list format: only what the caller's key may use.

Adapter aliases that the tenants file allows but the registry does not (yet) hold are left out.
"""

from __future__ import annotations

from fastapi import APIRouter

from ..protocol import ModelCard, ModelList
from ..state import PrincipalDep, StateDep

router = APIRouter(tags=["models"])


@router.get("/v1/models")
async def list_models(state: StateDep, principal: PrincipalDep) -> ModelList:
    base = state.settings.model_name
    published = state.registry.aliases()
    cards = []
    for name in state.tenancy.visible_models(principal):
        if name != base and name not in published:
            continue
        parent = None if name == base else base
        cards.append(ModelCard(id=name, created=state.created, root=base, parent=parent))
    return ModelList(data=cards)
