"""GET /metrics: Prometheus text format 0.0.4; a key only with ``metrics_auth`` (service/admin/auth.py)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import generate_latest

from ..state import StateDep

router = APIRouter(tags=["metrics"])
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(state: StateDep) -> Response:
    """Gauges read from the engine now; the rest (GPU and process included) rendered off the event loop."""
    health = await state.engine.health()
    state.metrics.engine_load(health.extra)
    body = await asyncio.to_thread(generate_latest, state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE)
