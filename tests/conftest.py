"""Shared fixtures: a tiny random Llama with SmolLM2's tokenizer, apps and servers on it."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from service.app import create_app
from service.config import Settings
from service.http_server import server_options
from service.model_store import prepare_model
from testkit.tiny_llama import write_tiny_llama

API_KEY = "sk-test-0123456789abcdef"
TINY_MODEL = "tiny-llama"
SMOLLM2_DIR = Path(__file__).resolve().parents[1] / "data" / "models" / "smollm2-135m-instruct"
# Every gateway a test starts writes its usage ledger here, not into the repository's data/.
TEST_LEDGER_URL = f"sqlite:///{tempfile.mkdtemp(prefix='loragate-test-ledger-')}/usage.db"
os.environ["LORAGATE_LEDGER_URL"] = TEST_LEDGER_URL  # for the servers that session fixtures start


@pytest.fixture(autouse=True)
def no_loragate_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see no LORAGATE_* variables from the shell that runs them (but the test ledger's)."""
    for name in list(os.environ):
        if name.upper().startswith("LORAGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LORAGATE_LEDGER_URL", TEST_LEDGER_URL)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real packaged model, prepared once (idempotent)."""
    return prepare_model(SMOLLM2_DIR)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """A 2-layer random Llama (float32) that speaks SmolLM2's tokenizer and chat template."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_dir)


@pytest.fixture(scope="session")
def wide_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with weights drawn wider (std 0.3 instead of 0.02).

    With the default init, greedy decoding only repeats the prompt's last token ("\n" after a
    chat prompt), so batching bugs (positions, padding, masks) or an adapter could not change
    any output. Wider weights make every next token depend on the whole context.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.3
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    path = tmp_path_factory.mktemp("wide-tiny-llama")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def make_settings(model_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "api_key": API_KEY,
        "model_path": model_dir,
        "model_name": TINY_MODEL,
        "dtype": "float32",
        "threads": 2,
        "max_batch_size": 8,
        "default_max_tokens": 16,
    }
    return Settings(**(values | overrides))


async def wait_ready(client: httpx.AsyncClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (await client.get("/ready")).status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("the engine did not become ready")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
def tiny_settings(tiny_model_dir: Path) -> Settings:
    return make_settings(tiny_model_dir)


@pytest.fixture(scope="session")
async def app(tiny_settings: Settings) -> AsyncIterator[FastAPI]:
    """One app on the tiny model for the whole session, its lifespan running."""
    application = create_app(tiny_settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An authenticated client over httpx's ASGI transport, once the engine is ready."""
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=headers) as c:
        await wait_ready(c)
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A real uvicorn server on 127.0.0.1, in a thread of this process, ready when ``ready_path`` is 200."""

    def __init__(
        self, settings: Settings | None = None, *, app: ASGIApp | None = None, ready_path: str = "/ready"
    ):
        assert (settings is None) != (app is None), "give settings or an app"
        self.port = free_port()
        self.ready_path = ready_path
        application = app if app is not None else create_app(settings)  # type: ignore[arg-type]
        options = server_options(settings if settings is not None else Settings())  # as `loragate serve`
        config = uvicorn.Config(application, host="127.0.0.1", port=self.port, log_level="warning", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the live server did not become ready")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def live_server(tiny_settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(tiny_settings) as server:
        yield server
