"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..state import StateDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "the engine cannot generate yet"}})
async def ready(state: StateDep) -> JSONResponse:
    """Readiness: 200 only once the engine can generate."""
    health = await state.engine.health()
    body = {"status": "ready" if health.ready else "not_ready", "detail": health.detail, **health.extra}
    return JSONResponse(body, status_code=200 if health.ready else 503)
