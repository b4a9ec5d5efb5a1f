"""Fixtures for the API tests: apps and a uvicorn server on the fake engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings
from tests.conftest import API_KEY, LiveServer
from tests.fakes import FakeEngine

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def fake_settings(engine: FakeEngine) -> Settings:
    return Settings(api_key=API_KEY, model_name=engine.model_name, max_request_bytes=4096)


def fake_app(engine: FakeEngine) -> FastAPI:
    return create_app(fake_settings(engine), engine_factory=lambda _: engine)


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def fake_client(fake: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    """An authenticated ASGI client on an app whose engine is ``fake`` (set it up before calling)."""
    app = fake_app(fake)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=AUTH) as client:
            yield client
    assert fake.started and fake.closed


class FakeServer(LiveServer):
    """A real uvicorn server on the fake engine; ready as soon as ``/health`` answers."""

    def __init__(self, engine: FakeEngine):
        super().__init__(app=fake_app(engine), ready_path="/health")
        self.engine = engine


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeServer]:
    with FakeServer(FakeEngine()) as server:
        yield server


@pytest.fixture
def served_fake(fake_server: FakeServer) -> Iterator[FakeEngine]:
    """The module's fake server engine, reset to its defaults for each test."""
    engine = fake_server.engine
    defaults = FakeEngine()
    for name in ("ready", "fail_at_start", "fail_mid_stream", "script", "finish_reason"):
        setattr(engine, name, getattr(defaults, name))
    yield engine
