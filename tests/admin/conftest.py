"""One real gateway with the admin API and ``metrics_auth`` on: two tenants, templates, two adapters."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import Settings

from ..conftest import TINY_MODEL, LiveServer
from ..worlds import build_deployment

ADMIN_KEY = "sk-admin-0123456789abcdef0123"

TENANTS = """
tenants:
  acme:
    default_department: it
    limits: {tokens_per_month: 10000000}
    departments:
      it:
        adapter: acme-it
        template: acme/it
        limits: {requests_per_minute: 10, tokens_per_day: 1000000, concurrent_requests: 50}  # 1 per 6 s back
      legal:
        template: acme/legal
        variables: {region: EU}
  globex:
    departments:
      sales: {}
"""

TEMPLATES = {
    "acme/it.yaml": """
        version: "1"
        system: "You are the {{ department }} assistant of {{ tenant }}."
    """,
    "acme/legal.yaml": """
        version: "2"
        system: "You review {{ region }} contracts for {{ tenant }}."
    """,
}


@dataclass
class Admin:
    """The gateway, its files, and clients: ``admin`` (the admin key) and ``as_key(key)``."""

    server: LiveServer
    settings: Settings
    root: Path
    ledger_url: str
    tenant_keys: dict[str, str]  # tenant -> a key of it
    admin: httpx.Client

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def as_key(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.Client(base_url=self.origin, headers=headers, timeout=60)

    def chat(self, key: str, department: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} | ({"X-Department": department} if department else {})
        body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        return httpx.post(f"{self.origin}/v1/chat/completions", json=body, headers=headers, timeout=60)

    def audit(self, **query: Any) -> list[dict[str, Any]]:
        response = self.admin.get("/admin/v1/audit", params=query)
        assert response.status_code == 200, response.text
        entries: list[dict[str, Any]] = response.json()["data"]
        return entries


def write_atomic(path: Path, text: str) -> None:
    """As an editor or a deploy tool replaces a file: a new inode, so the change is always seen."""
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@pytest.fixture(scope="package")
def deployment_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("admin")


@pytest.fixture(scope="package")
def admin_world(deployment_root: Path, tiny_model_dir: Path) -> Iterator[Admin]:
    ledger_url = f"sqlite:///{deployment_root}/usage.db"
    deployment = build_deployment(
        deployment_root,
        tiny_model_dir,
        tenants=TENANTS,
        templates=TEMPLATES,
        adapters=[("acme-it", "acme-it-lora", 1), (None, "acme-it-lora", 2)],
        admin_api_key=ADMIN_KEY,
        metrics_auth=True,
        ledger_url=ledger_url,
    )
    keys = {tenant: deployment.keys.create(tenant)[1] for tenant in ("acme", "globex")}
    with LiveServer(deployment.settings, ready_path="/health") as server:  # /ready wants a key here
        origin = f"http://127.0.0.1:{server.port}"
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=origin, headers=headers, timeout=60) as admin:
            deadline = time.monotonic() + 60
            while admin.get("/ready").status_code != 200:
                assert time.monotonic() < deadline, "the engine did not become ready"
                time.sleep(0.05)
            yield Admin(server, deployment.settings, deployment_root, ledger_url, keys, admin)
