"""Apps for the metrics tests: a fresh one per test (so counts start at zero), on the fake engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings
from service.domain import Delta, GenerationRequest
from tests.conftest import API_KEY
from tests.fakes import FakeEngine

from .fake_nvml import FakeNvml

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class GatedEngine(FakeEngine):
    """Sends "Hello" on each choice, then waits for ``gate`` before finishing (one token each)."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        finished = 0
        try:
            for index in range(request.n):
                yield Delta(index, "Hello", queue_seconds=0.2 if index == 0 else None)
            await self.gate.wait()
            for index in range(request.n):
                yield Delta(index, "", "stop", self.prompt_tokens, 1)
                finished += 1
        finally:
            if finished < request.n:
                self.aborted += 1


def fake_app(engine: FakeEngine) -> FastAPI:
    settings = Settings(api_key=API_KEY, model_name=engine.model_name, max_request_bytes=4096)
    return create_app(settings, engine_factory=lambda _: engine, nvml=FakeNvml([], driver=False))


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def app(fake: FakeEngine) -> AsyncIterator[FastAPI]:
    application = fake_app(fake)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def gateway(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An ASGI client without credentials (tests send ``AUTH`` themselves)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        yield client
