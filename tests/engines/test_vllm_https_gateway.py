"""The gateway in front of an https:// vLLM stand-in that wants an API key, as vLLM's ``--api-key``.

Real parts: the project's instant stand-in (``loadtests/instant_upstream.py``) under uvicorn with
TLS from a CA made here (``trustme``), behind a check of the key that copies vLLM's own (every
``/v1`` path, 401 otherwise); the gateway on uvicorn too, driven by the ``openai`` client. The
upstream URL names ``localhost``, so discovery looks it up through the system's resolver and
dials each address it gets, verifying the certificate for ``localhost``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trustme
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from loadtests.instant_upstream import app as instant_app
from service.app import create_app
from service.config import Settings
from service.engines.vllm.factory import vllm_engine
from tests.conftest import API_KEY, LiveServer, free_port

UPSTREAM_KEY = "vllm-key-7f3a"


class KeyCheck:
    """vLLM's AuthenticationMiddleware in short: ``/v1`` paths want ``Bearer <key>``; notes what came."""

    def __init__(self, app: ASGIApp, key: str):
        self.app, self.key = app, key
        self.seen: list[tuple[str, str | None]] = []  # (path, authorization)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            authorization = headers.get(b"authorization")
            self.seen.append((scope["path"], authorization.decode() if authorization else None))
            if scope["path"].startswith("/v1") and authorization != f"Bearer {self.key}".encode():
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b'{"error": "Unauthorized"}'})
                return
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The stand-in's key and certificate (for localhost), its CA, and a CA that did not sign it."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    paths = {name: folder / f"{name}.pem" for name in ("key", "cert", "ca", "other_ca")}
    cert.private_key_pem.write_to_path(str(paths["key"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    trustme.CA().cert_pem.write_to_path(str(paths["other_ca"]))
    return paths


@pytest.fixture(scope="module")
def stand_in(pki: dict[str, Path]) -> Iterator[tuple[int, KeyCheck]]:
    """The instant stand-in on https://127.0.0.1:PORT, wanting ``UPSTREAM_KEY``."""
    port, keyed = free_port(), KeyCheck(instant_app, UPSTREAM_KEY)
    config = uvicorn.Config(
        keyed,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_keyfile=str(pki["key"]),
        ssl_certfile=str(pki["cert"]),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the TLS stand-in did not start"
        time.sleep(0.05)
    yield port, keyed
    server.should_exit = True
    thread.join(timeout=10)


@contextmanager
def gateway(tmp_path: Path, upstream: str, **settings: Any) -> Iterator[tuple[LiveServer, str]]:
    """The gateway in front of ``upstream``, its ledger in ``tmp_path``; yields it and its root URL."""
    ledger = f"sqlite:///{tmp_path / 'usage.db'}"
    values: dict[str, Any] = {
        "api_key": API_KEY,
        "model_name": "m",
        "engine": "vllm",
        "upstream": [upstream],
        "health_interval": 0.2,
    }
    app = create_app(Settings(**values, ledger_url=ledger, **settings), vllm_engine)
    with LiveServer(app=app, ready_path="/health") as server:
        yield server, f"http://127.0.0.1:{server.port}"


def ready_when(root: str, wanted: int, timeout: float = 20) -> dict[str, Any]:
    """``/ready``'s body once its status is ``wanted`` and every replica has been checked."""
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(f"{root}/ready", timeout=5)
        body: dict[str, Any] = answer.json()
        checked = body.get("upstreams") and all(
            u.get("reason") != "not checked yet" for u in body["upstreams"]
        )
        if answer.status_code == wanted and checked:
            return body
        assert time.monotonic() < deadline, f"/ready stayed {answer.status_code}: {body}"
        time.sleep(0.1)


def test_chat_over_https_with_the_key_and_the_replica_in_the_ledger(
    tmp_path: Path, pki: dict[str, Path], stand_in: tuple[int, KeyCheck]
) -> None:
    port, keyed = stand_in
    upstream = f"https://localhost:{port}"
    with gateway(tmp_path, upstream, upstream_ca_bundle=pki["ca"], upstream_api_key=UPSTREAM_KEY) as (
        server,
        root,
    ):
        ready = ready_when(root, 200)
        client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
        answer = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        streamed = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "HiHi"
        deadline = time.monotonic() + 10  # vLLM's /metrics is read in the background, after a check
        while not any(path == "/metrics" for path, _ in keyed.seen) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert answer.choices[0].message.content == "HiHiHi"
    here = {u["replica"]: u for u in ready["upstreams"]}
    assert here[f"127.0.0.1:{port}"] == {
        "replica": f"127.0.0.1:{port}",
        "url": upstream,
        "address": "127.0.0.1",
        "state": "up",
    }
    for other in set(here) - {f"127.0.0.1:{port}"}:  # ::1, where localhost has it: nothing listens there
        assert here[other]["state"] == "down" and here[other]["reason"]
    assert ready["discovery"] == [{"url": upstream, "addresses": [u["address"] for u in ready["upstreams"]]}]
    paths = {path for path, _ in keyed.seen}
    assert {"/health", "/v1/models", "/v1/chat/completions", "/metrics"} <= paths
    assert {auth for _, auth in keyed.seen} == {f"Bearer {UPSTREAM_KEY}"}  # on every hop
    with closing(sqlite3.connect(tmp_path / "usage.db")) as db:
        rows = db.execute("SELECT engine, replica, status FROM usage_records ORDER BY id").fetchall()
    assert rows == [("vllm", f"127.0.0.1:{port}", 200)] * 2


def test_a_ca_that_did_not_sign_the_certificate_is_reported(
    tmp_path: Path, pki: dict[str, Path], stand_in: tuple[int, KeyCheck], caplog: pytest.LogCaptureFixture
) -> None:
    port, _ = stand_in
    with gateway(
        tmp_path,
        f"https://127.0.0.1:{port}",
        upstream_ca_bundle=pki["other_ca"],
        upstream_api_key=UPSTREAM_KEY,
    ) as (_, root):
        ready = ready_when(root, 503)
        time.sleep(0.5)  # a few more failed checks: still one warning
        metrics = httpx.get(f"{root}/metrics").text
    [replica] = ready["upstreams"]
    assert replica["state"] == "down" and "CERTIFICATE_VERIFY_FAILED" in replica["reason"]
    assert f'loragate_replica_up{{replica="127.0.0.1:{port}"}} 0.0' in metrics
    failures = f'loragate_replica_failures_total{{reason="tls",replica="127.0.0.1:{port}"}}'
    assert failures in metrics and float(metrics.split(failures)[1].split()[0]) >= 2
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "is DOWN" in r.getMessage()]
    assert len(warnings) == 1 and "CERTIFICATE_VERIFY_FAILED" in warnings[0].getMessage()


@pytest.mark.parametrize("key", [None, "not-the-key"])
def test_a_missing_or_wrong_upstream_key_is_reported(
    tmp_path: Path, pki: dict[str, Path], stand_in: tuple[int, KeyCheck], key: str | None
) -> None:
    port, _ = stand_in
    with gateway(
        tmp_path, f"https://127.0.0.1:{port}", upstream_ca_bundle=pki["ca"], upstream_api_key=key
    ) as (
        server,
        root,
    ):
        ready = ready_when(root, 503)
        metrics = httpx.get(f"{root}/metrics").text
        client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    [replica] = ready["upstreams"]
    assert replica["state"] == "down" and "/v1/models answered 401" in replica["reason"]
    assert ("wants an API key" if key is None else "refuses upstream_api_key") in replica["reason"]
    assert f'loragate_replica_failures_total{{reason="unauthorized",replica="127.0.0.1:{port}"}}' in metrics
    assert refused.value.status_code == 503


def test_http_to_an_https_replica_is_reported(
    tmp_path: Path, pki: dict[str, Path], stand_in: tuple[int, KeyCheck]
) -> None:
    port, _ = stand_in
    with gateway(tmp_path, f"http://127.0.0.1:{port}", upstream_api_key=UPSTREAM_KEY) as (_, root):
        ready = ready_when(root, 503)
    [replica] = ready["upstreams"]
    assert replica["state"] == "down" and "(is it an https server?)" in replica["reason"], replica
