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


@router.get(
    "/ready", responses={503: {"description": "the engine cannot generate yet, or the server is draining"}}
)
async def ready(state: StateDep) -> JSONResponse:
    """Readiness: 200 only once the engine can generate, and no longer once the server is draining for
    shutdown (a load balancer then stops sending). ``in_flight``: generating requests, per engine."""
    in_flight = state.admission.in_flight()
    if state.admission.draining:
        draining = {"status": "draining", "detail": "shutting down", "in_flight": in_flight}
        return JSONResponse(draining, status_code=503)
    health = await state.engine.health()
    status = "ready" if health.ready else "not_ready"
    body: dict[str, object] = {"status": status, "detail": health.detail, **health.extra}
    body["in_flight"] = in_flight
    return JSONResponse(body, status_code=200 if health.ready else 503)
