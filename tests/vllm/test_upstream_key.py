"""Real vLLM with an API key: ``--spawn`` gives it ``upstream_api_key``, and the gateway sends it.

One vLLM start (30-70 s on two cores), so one test: the spawned server refuses a call without
the key, and the gateway's chat (which loads an adapter, so ``/v1/load_lora_adapter`` and
``/v1/models`` are keyed too) works.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import SecretStr

from service.app import create_app
from service.engines.vllm.engine import VllmEngine
from service.engines.vllm.factory import vllm_engine
from tests.conftest import TINY_MODEL, LiveServer, free_port
from tests.vllm.servers import CPU_FLAGS, VLLM_PYTHON
from tests.worlds import Deployment

pytestmark = pytest.mark.vllm

KEY = "vllm-upstream-key-42"


def test_spawned_vllm_wants_the_upstream_key_and_the_gateway_sends_it(
    deployment: Deployment, acme_key: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "usage.db"
    settings = deployment.settings.model_copy(
        update={
            "engine": "vllm",
            "spawn": True,
            "vllm_python": str(VLLM_PYTHON),
            "vllm_port": free_port(),
            "vllm_args": CPU_FLAGS,
            "vllm_max_loras": 2,
            "health_interval": 0.5,
            "upstream_api_key": SecretStr(KEY),  # model_copy does not validate
            "ledger_url": f"sqlite:///{ledger}",
        }
    )
    app = create_app(settings, vllm_engine)
    with LiveServer(app=app, ready_path="/health") as server:
        root = server.base_url.removesuffix("/v1")
        deadline = time.monotonic() + 300
        while httpx.get(f"{root}/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, httpx.get(f"{root}/ready", timeout=10).text
            time.sleep(0.5)
        engine = app.state.loragate.engine
        assert isinstance(engine, VllmEngine) and engine.supervisor is not None
        assert KEY not in " ".join(engine.supervisor.command.argv())  # in its environment, not in ps
        vllm = engine.supervisor.command.url
        assert httpx.get(f"{vllm}/v1/models", timeout=10).status_code == 401
        keyed = httpx.get(f"{vllm}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
        assert keyed.status_code == 200
        client = openai.OpenAI(base_url=server.base_url, api_key=acme_key, max_retries=0, timeout=120)
        answer = client.chat.completions.create(
            model=TINY_MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            temperature=0,
            extra_headers={"X-Department": "it"},  # an adapter: loaded with the key
        )
        assert answer.choices[0].finish_reason in ("stop", "length")
    with closing(sqlite3.connect(ledger)) as db:
        rows = db.execute("SELECT engine, replica, adapter FROM usage_records").fetchall()
    assert rows == [("vllm", vllm.removeprefix("http://"), "acme-it@1")]
