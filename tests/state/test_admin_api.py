"""``/admin/v1`` with ``state_url``: the tenants document replaced through the API, keys in the database.

One real gateway (uvicorn in a thread, the tiny model) on a fresh database of the real PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.admin import operations as ops
from service.errors import InvalidRequestError
from service.prompts import TemplateStore
from service.registry import Registry
from service.tenancy import TenantDirectory
from tests.api.helpers import assert_envelope
from tests.conftest import TINY_MODEL, LiveServer, make_settings

from .conftest import TENANTS

ADMIN_KEY = "sk-admin-state-0123456789abcdef"


@pytest.fixture
def admin(state_url: str, tiny_model_dir: Path, tmp_path: Path) -> Iterator[httpx.Client]:
    settings = make_settings(
        tiny_model_dir,
        state_url=state_url,
        admin_api_key=ADMIN_KEY,
        prompts_dir=tmp_path / "prompts",
        registry_dir=tmp_path / "registry",
    )
    with LiveServer(settings) as server:
        origin = f"http://127.0.0.1:{server.port}"
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=origin, headers=headers, timeout=60) as client:
            yield client


def _chat(admin: httpx.Client, key: str) -> httpx.Response:
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    return admin.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})


def test_replace_the_tenants_document_then_use_a_key_of_it(admin: httpx.Client) -> None:
    empty = admin.get("/admin/v1/tenants").json()
    assert empty["version"] is None and empty["yaml"] is None and list(empty["tenants"]) == ["default"]

    for bad in ("tenants: [", "tenants: {acme: {departments: {}}}"):
        assert_envelope(admin.put("/admin/v1/tenants", json={"yaml": bad}), 400, param="yaml")
    assert_envelope(admin.put("/admin/v1/tenants", json={}), 400, param="yaml")
    assert admin.get("/admin/v1/tenants").json()["version"] is None  # nothing stored

    replaced = admin.put("/admin/v1/tenants", json={"yaml": TENANTS})
    assert replaced.status_code == 200, replaced.text
    assert replaced.headers["x-loragate-audit"] == "written"
    body = replaced.json()
    assert body["version"] == 1 and sorted(body["tenants"]) == ["acme", "globex"]
    missing = "tenant 'acme', department 'it': adapter alias 'acme-it' is not in the registry"
    assert body["warnings"] == [missing]  # taken all the same, as a tenants file would be
    current = admin.get("/admin/v1/tenants").json()
    assert (current["version"], current["yaml"]) == (1, TENANTS)
    entry = admin.get("/admin/v1/audit", params={"action": "tenants.replace"}).json()["data"][-1]
    assert entry["target"] == "tenants@1" and list(entry["before"]) == ["default"]
    assert sorted(entry["after"]) == ["acme", "globex"]

    created = admin.post("/admin/v1/keys", json={"tenant": "globex"})
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["id"]
    assert _chat(admin, key).status_code == 200
    assert [k["id"] for k in admin.get("/admin/v1/keys").json()["data"]] == [key_id]
    assert admin.delete(f"/admin/v1/keys/{key_id}").status_code == 200
    assert_envelope(_chat(admin, key), 401)
    assert_envelope(admin.post("/admin/v1/keys", json={"tenant": "initech"}), 404, param="tenant")


def test_the_file_is_not_replaced_through_the_api(tmp_path: Path) -> None:
    (tmp_path / "tenants.yaml").write_text(TENANTS)
    directory = TenantDirectory(tmp_path / "tenants.yaml", "base-model")
    with pytest.raises(InvalidRequestError) as refused:
        ops.replace_tenants(
            directory, Registry(tmp_path / "r", "base-model"), TemplateStore(tmp_path), TENANTS, "admin:x"
        )
    assert refused.value.code == "tenants_in_file" and "reload" in refused.value.message
    assert ops.current_tenants(directory)["yaml"] == TENANTS
