"""``serve --engine vllm --spawn``: the gateway starts vLLM, restarts it if it dies, stops it at shutdown."""

from __future__ import annotations

import os
import signal
import time

import httpx
import openai
import pytest

from service.app import create_app
from service.engines.vllm.engine import VllmEngine
from tests.conftest import TINY_MODEL, LiveServer, free_port
from tests.vllm.servers import CPU_FLAGS, VLLM_PYTHON
from tests.worlds import Deployment

pytestmark = pytest.mark.vllm


def answer(server: LiveServer, key: str) -> str:
    client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=60)
    result = client.chat.completions.create(
        model=TINY_MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        extra_headers={"X-Department": "it"},
    )
    return result.choices[0].message.content or ""


def wait_ready(server: LiveServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(server.base_url.removesuffix("/v1") + "/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the spawned vLLM never became ready"
        time.sleep(0.5)


def test_spawned_vllm_is_supervised(deployment: Deployment, acme_key: str) -> None:
    settings = deployment.settings.model_copy(
        update={
            "engine": "vllm",
            "spawn": True,
            "vllm_python": str(VLLM_PYTHON),
            "vllm_port": free_port(),
            "vllm_args": CPU_FLAGS,
            "vllm_max_loras": 2,
            "health_interval": 0.5,
        }
    )
    app = create_app(settings)
    server = LiveServer(app=app, ready_path="/health")
    with server:
        wait_ready(server, timeout=300)
        engine = app.state.loragate.engine
        assert isinstance(engine, VllmEngine) and engine.supervisor is not None
        argv = " ".join(engine.supervisor.command.argv())
        assert "--enable-lora --max-lora-rank 8 --max-loras 2" in argv
        first = answer(server, acme_key)
        process = engine.supervisor.process
        assert process is not None
        os.killpg(process.pid, signal.SIGKILL)  # vLLM dies
        deadline = time.monotonic() + 20
        while httpx.get(server.base_url.removesuffix("/v1") + "/ready", timeout=10).status_code == 200:
            assert time.monotonic() < deadline, "the dead vLLM was never taken out"
            time.sleep(0.2)
        wait_ready(server, timeout=300)
        assert engine.supervisor.restarts == 1
        assert answer(server, acme_key) == first  # the adapter was loaded again on the new process
        restarted = engine.supervisor.process
    assert restarted is not None and restarted.returncode is not None  # stopped with the gateway
