"""/admin/v1/keys: a key created here works at once, stops at revoke, and every change is in the audit log."""

from __future__ import annotations

import hashlib

from ..api.helpers import assert_envelope
from .conftest import ADMIN_KEY, Admin

ADMIN_ACTOR = "admin:" + hashlib.sha256(ADMIN_KEY.encode()).hexdigest()[:8]


def test_create_use_list_revoke(admin_world: Admin) -> None:
    admin = admin_world.admin
    created = admin.post("/admin/v1/keys", json={"tenant": "acme", "department": "legal"})
    assert created.status_code == 201, created.text
    assert created.headers["x-loragate-audit"] == "written"
    body = created.json()
    key, key_id = body["key"], body["id"]
    assert key.startswith("lg-") and key_id.startswith("key_")
    assert body | {"key": None, "created": None} == {
        "key": None,
        "id": key_id,
        "tenant": "acme",
        "department": "legal",
        "created": None,
        "revoked": False,
        "limits": None,
    }

    answer = admin_world.chat(key)  # at once: the gateway re-reads the keys file on its next request
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-loragate-department"] == "legal"

    listing = admin.get("/admin/v1/keys")
    assert listing.status_code == 200
    assert {"id": key_id, "tenant": "acme", "department": "legal", "revoked": False}.items() <= next(
        k for k in listing.json()["data"] if k["id"] == key_id
    ).items()
    assert key not in listing.text and hashlib.sha256(key.encode()).hexdigest() not in listing.text

    revoked = admin.delete(f"/admin/v1/keys/{key_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    assert_envelope(admin_world.chat(key), 401, code="invalid_api_key")

    [create] = [
        e for e in admin_world.audit(action="keys.create", actor=ADMIN_ACTOR) if e["target"] == key_id
    ]
    assert create["before"] is None
    assert create["after"]["tenant"] == "acme" and create["after"]["revoked"] is False
    assert key not in str(admin_world.audit())  # the secret is never in the log
    [revoke] = [e for e in admin_world.audit(action="keys.revoke") if e["target"] == key_id]
    assert revoke["actor"] == ADMIN_ACTOR
    assert (revoke["before"]["revoked"], revoke["after"]["revoked"]) == (False, True)


def test_a_key_with_its_own_limits(admin_world: Admin) -> None:
    admin = admin_world.admin
    created = admin.post("/admin/v1/keys", json={"tenant": "globex", "limits": {"requests_per_minute": 1}})
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["id"]
    assert created.json()["limits"] == {"requests_per_minute": 1}
    assert admin_world.chat(key).status_code == 200
    assert_envelope(admin_world.chat(key), 429, code="rate_limit_exceeded")

    counters = admin.get("/admin/v1/limits", params={"key": key_id})
    assert counters.status_code == 200
    (scope,) = counters.json()["data"]
    assert scope["scope"] == "key" and scope["name"] == key_id and scope["tenant"] == "globex"
    assert scope["limits"] == {"requests_per_minute": 1}
    assert scope["usage"]["requests_remaining"] == 0 and scope["usage"]["tokens_today"] is None


def test_bad_input(admin_world: Admin) -> None:
    admin = admin_world.admin
    for body, status, param in [
        ({"tenant": "initech"}, 404, "tenant"),
        ({"tenant": "acme", "department": "sales"}, 404, "department"),  # globex's, not acme's
        ({"tenant": "acme", "limits": {"requests_per_minute": 0}}, 400, "limits.requests_per_minute"),
        ({"tenant": "acme", "limits": {"per_hour": 5}}, 400, "limits.per_hour"),
        ({"tenant": "acme", "owner": "me"}, 400, "owner"),
        ({"tenant": "Not A Name"}, 400, "tenant"),
        ({}, 400, "tenant"),
    ]:
        assert_envelope(admin.post("/admin/v1/keys", json=body), status, param=param)
    assert_envelope(admin.delete("/admin/v1/keys/key_00000000"), 404, param="key_id", code="key_not_found")
    assert_envelope(admin.get("/admin/v1/limits", params={"key": "key_00000000"}), 404, param="key")
    assert admin_world.audit(action="keys.create", since="2999-01-01") == []
