"""/admin/v1/adapters: list, publish a folder, promote and roll back (seen by the next request), audited."""

from __future__ import annotations

from pathlib import Path

from ..api.helpers import assert_envelope
from ..demo_adapters import make_adapter
from .conftest import Admin


def test_list(admin_world: Admin) -> None:
    listing = admin_world.admin.get("/admin/v1/adapters")
    assert listing.status_code == 200
    body = listing.json()
    lora = next(a for a in body["data"] if a["name"] == "acme-it-lora")
    assert [v["ref"] for v in lora["versions"]][:2] == ["acme-it-lora@1", "acme-it-lora@2"]
    assert {"level", "rank", "sha256", "created", "base_model"} <= set(lora["versions"][0])
    assert {"alias": "acme-it", "current": "acme-it-lora@1", "history": []} in body["aliases"]


def test_promote_and_rollback_reach_the_next_request(admin_world: Admin) -> None:
    admin, key = admin_world.admin, admin_world.tenant_keys["acme"]
    assert admin_world.chat(key, "it").headers["x-loragate-adapter"] == "acme-it-lora@1"

    promoted = admin.post("/admin/v1/adapters/promote", json={"alias": "acme-it", "ref": "acme-it-lora@2"})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json() == {"alias": "acme-it", "current": "acme-it-lora@2", "history": ["acme-it-lora@1"]}
    assert admin_world.chat(key, "it").headers["x-loragate-adapter"] == "acme-it-lora@2"

    rolled_back = admin.post("/admin/v1/adapters/rollback", json={"alias": "acme-it"})
    assert rolled_back.status_code == 200, rolled_back.text
    assert rolled_back.json() == {"alias": "acme-it", "current": "acme-it-lora@1", "history": []}
    assert admin_world.chat(key, "it").headers["x-loragate-adapter"] == "acme-it-lora@1"

    promote = admin_world.audit(action="adapters.promote")[-1]
    assert promote["before"] == {"current": "acme-it-lora@1", "history": []}
    assert promote["after"] == {"current": "acme-it-lora@2", "history": ["acme-it-lora@1"]}
    rollback = admin_world.audit(action="adapters.rollback")[-1]
    assert (rollback["target"], rollback["before"]["current"], rollback["after"]["current"]) == (
        "acme-it",
        "acme-it-lora@2",
        "acme-it-lora@1",
    )


def test_publish_a_folder(admin_world: Admin, tiny_model_dir: Path) -> None:
    folder = make_adapter(tiny_model_dir, admin_world.root / "trained" / "extra", seed=7)
    published = admin_world.admin.post(
        "/admin/v1/adapters/publish", json={"path": str(folder), "name": "extra-lora", "level": "L3"}
    )
    assert published.status_code == 201, published.text
    assert published.json()["ref"] == "extra-lora@1" and published.json()["level"] == "L3"
    again = admin_world.admin.post(
        "/admin/v1/adapters/publish", json={"path": str(folder), "name": "extra-lora", "level": "L3"}
    )
    assert again.json()["ref"] == "extra-lora@2"
    entry = admin_world.audit(action="adapters.publish")[-1]
    assert (entry["target"], entry["before"], entry["after"]["ref"]) == ("extra-lora@2", None, "extra-lora@2")

    broken = admin_world.root / "not-an-adapter"
    broken.mkdir()
    for body, param in [
        ({"path": str(broken), "name": "x", "level": "L2"}, "path"),  # no adapter_config.json
        ({"path": str(broken / "missing"), "name": "x", "level": "L2"}, "path"),
        ({"path": "trained/extra", "name": "x", "level": "L2"}, "path"),  # relative
        ({"path": str(folder), "name": "../escape", "level": "L2"}, "name"),
        ({"path": str(folder), "name": "x", "level": "L4"}, "level"),
        ({"path": str(folder), "name": "x"}, "level"),
    ]:
        assert_envelope(admin_world.admin.post("/admin/v1/adapters/publish", json=body), 400, param=param)
    assert not (admin_world.root / "registry" / "adapters" / "x").exists()


def test_bad_promotions(admin_world: Admin) -> None:
    admin = admin_world.admin
    for body, status, param in [
        ({"alias": "acme-it", "ref": "acme-it-lora"}, 400, "ref"),
        ({"alias": "acme-it", "ref": "acme-it-lora@9"}, 404, "ref"),
        ({"alias": "acme-it", "ref": "nobody@1"}, 404, "ref"),
        ({"alias": "Bad Alias", "ref": "acme-it-lora@2"}, 400, "alias"),
    ]:
        assert_envelope(admin.post("/admin/v1/adapters/promote", json=body), status, param=param)
    assert_envelope(admin.post("/admin/v1/adapters/rollback", json={"alias": "nobody"}), 404, param="alias")
    no_history = admin.post("/admin/v1/adapters/rollback", json={"alias": "acme-it"})
    assert_envelope(no_history, 400, param="alias", code="no_earlier_version")
    assert admin.get("/admin/v1/adapters").json()["aliases"][0]["current"] == "acme-it-lora@1"
