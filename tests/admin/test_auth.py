"""Who may call /admin/v1, and /metrics and /ready with ``metrics_auth``; an admin API that is off is gone."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ..api.helpers import assert_envelope
from ..conftest import API_KEY, LiveServer, make_settings
from .conftest import ADMIN_KEY, Admin

ADMIN_PATHS = [
    ("GET", "/admin/v1/keys"),
    ("POST", "/admin/v1/keys"),
    ("DELETE", "/admin/v1/keys/key_00000000"),
    ("POST", "/admin/v1/tenants/reload"),
    ("POST", "/admin/v1/tenants/validate"),
    ("POST", "/admin/v1/templates/validate"),
    ("GET", "/admin/v1/adapters"),
    ("POST", "/admin/v1/adapters/publish"),
    ("POST", "/admin/v1/adapters/promote"),
    ("POST", "/admin/v1/adapters/rollback"),
    ("GET", "/admin/v1/usage"),
    ("GET", "/admin/v1/audit"),
    ("GET", "/admin/v1/limits"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_PATHS)
def test_only_the_admin_key_gets_in(admin_world: Admin, method: str, path: str) -> None:
    tenant_key = admin_world.tenant_keys["acme"]
    with admin_world.as_key(tenant_key) as tenant:
        error = assert_envelope(tenant.request(method, path, json={}), 403, code="permission_denied")
        assert error["type"] == "permission_denied"
    with admin_world.as_key(API_KEY) as bootstrap:  # the deployment's own tenant key is a tenant key too
        assert_envelope(bootstrap.request(method, path, json={}), 403)
    for key in ("sk-wrong-key", ADMIN_KEY + "x", ADMIN_KEY[:-1], None):
        with admin_world.as_key(key) as stranger:
            assert_envelope(stranger.request(method, path, json={}), 401, code="invalid_api_key")
    with admin_world.as_key(ADMIN_KEY) as basic:  # another scheme is no key
        response = basic.request(method, path, headers={"Authorization": f"Basic {ADMIN_KEY}"}, json={})
        assert_envelope(response, 401)


def test_metrics_auth_on(admin_world: Admin) -> None:
    for path in ("/metrics", "/ready"):
        for key in (None, "sk-wrong-key"):
            with admin_world.as_key(key) as client:
                assert_envelope(client.get(path), 401, code="invalid_api_key")
        for key in (ADMIN_KEY, admin_world.tenant_keys["globex"], API_KEY):
            with admin_world.as_key(key) as client:
                assert client.get(path).status_code == 200
    with admin_world.as_key(None) as anyone:
        assert anyone.get("/health").status_code == 200  # liveness stays open
        assert "loragate_" in admin_world.admin.get("/metrics").text


def test_metrics_auth_off_and_no_admin_key(live_server: LiveServer) -> None:
    """The default settings: /metrics and /ready open to Prometheus, and no admin API at all."""
    origin = f"http://127.0.0.1:{live_server.port}"
    assert httpx.get(f"{origin}/metrics").status_code == 200
    assert httpx.get(f"{origin}/ready").status_code == 200
    for method, path in [*ADMIN_PATHS, ("GET", "/admin/v1/unknown"), ("GET", "/admin")]:
        for key in (API_KEY, ADMIN_KEY, None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            response = httpx.request(method, origin + path, headers=headers, json={})
            assert_envelope(response, 404, code="not_found")
    assert "/admin/v1/keys" not in httpx.get(f"{origin}/openapi.json").text


def test_the_admin_key_must_not_be_the_tenant_key(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="admin_api_key must differ"):  # the settings refuse it
        make_settings(tiny_model_dir, admin_api_key=API_KEY)


def test_openapi_documents_the_admin_api(admin_world: Admin) -> None:
    paths = admin_world.admin.get("/openapi.json").json()["paths"]
    assert {path for _, path in ADMIN_PATHS} - {"/admin/v1/keys/key_00000000"} <= set(paths)
    assert "/admin/v1/keys/{key_id}" in paths
