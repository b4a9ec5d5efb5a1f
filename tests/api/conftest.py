"""Fixtures for the API tests: apps and a uvicorn server on the fake engine."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings
from tests.conftest import API_KEY, free_port
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


class FakeServer:
    """A real uvicorn server on the fake engine; ready as soon as ``/health`` answers."""

    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.port = free_port()
        config = uvicorn.Config(fake_app(engine), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the fake server did not start")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


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
