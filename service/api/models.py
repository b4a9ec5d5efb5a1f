"""GET /v1/models in the OpenAI list format."""

from __future__ import annotations

from fastapi import APIRouter

from ..protocol import ModelCard, ModelList
from ..state import AuthDep, StateDep

router = APIRouter(tags=["models"], dependencies=[AuthDep])


@router.get("/v1/models")
async def list_models(state: StateDep) -> ModelList:
    created = state.created
    return ModelList(data=[ModelCard(id=name, created=created, root=name) for name in state.chat.served_models()])
