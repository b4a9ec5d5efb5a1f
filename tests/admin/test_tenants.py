"""/admin/v1/tenants (reload, validate) and /admin/v1/templates/validate."""

from __future__ import annotations

import textwrap

from ..api.helpers import assert_envelope
from .conftest import TENANTS, Admin, write_atomic

INITECH = (
    TENANTS
    + """
  initech:
    departments:
      tps: {adapter: initech-tps, template: initech/tps}
"""
)


def test_validate_the_file_and_a_posted_one(admin_world: Admin) -> None:
    admin = admin_world.admin
    checked = admin.post("/admin/v1/tenants/validate")
    assert checked.status_code == 200, checked.text
    assert checked.json()["valid"] is True and checked.json()["warnings"] == []
    assert checked.json()["tenants"]["acme"]["departments"]["it"] == {
        "adapter": "acme-it",
        "template": "acme/it",
        "limits": {"requests_per_minute": 10, "tokens_per_day": 1000000, "concurrent_requests": 50},
    }

    posted = admin.post("/admin/v1/tenants/validate", json={"yaml": INITECH})
    assert posted.status_code == 200, posted.text
    warnings = posted.json()["warnings"]
    assert len(warnings) == 2 and all("'initech', department 'tps'" in w for w in warnings)
    assert "initech-tps" in warnings[0] and "initech/tps" in warnings[1]
    assert "initech" not in admin.post("/admin/v1/tenants/validate").json()["tenants"]  # nothing applied

    for text in ("tenants: [", "tenants: {acme: {departments: {}}}", "- a list"):
        assert_envelope(admin.post("/admin/v1/tenants/validate", json={"yaml": text}), 400, param="yaml")
    assert_envelope(admin.post("/admin/v1/tenants/validate", json={"yaml": 5}), 400, param="yaml")


def test_reload(admin_world: Admin) -> None:
    admin, tenants_file = admin_world.admin, admin_world.settings.tenants_file
    assert tenants_file is not None
    write_atomic(tenants_file, INITECH)
    try:
        reloaded = admin.post("/admin/v1/tenants/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert sorted(reloaded.json()["tenants"]) == ["acme", "globex", "initech"]
        entry = admin_world.audit(action="tenants.reload")[-1]
        assert entry["target"] == str(tenants_file)
        assert sorted(entry["before"]) == ["acme", "globex"] and "initech" in entry["after"]
        created = admin.post("/admin/v1/keys", json={"tenant": "initech"})
        assert created.status_code == 201, created.text

        write_atomic(tenants_file, "tenants: [\n")  # a broken edit: refused, the previous stays in force
        refused = admin.post("/admin/v1/tenants/reload")
        assert_envelope(refused, 400, code="invalid_tenants_file")
        assert str(tenants_file) in refused.json()["error"]["message"]
        assert admin_world.chat(admin_world.tenant_keys["acme"]).status_code == 200
    finally:
        write_atomic(tenants_file, TENANTS)
        assert sorted(admin.post("/admin/v1/tenants/reload").json()["tenants"]) == ["acme", "globex"]


def test_validate_a_template(admin_world: Admin) -> None:
    admin = admin_world.admin
    checked = admin.post("/admin/v1/templates/validate", json={"name": "acme/legal"})
    assert checked.status_code == 200, checked.text
    assert checked.json() | {"rendered": None} == {
        "name": "acme/legal",
        "version": "2",
        "ref": "acme/legal@2",
        "cot": "off",
        "few_shot": 0,
        "rendered": None,
    }
    assert checked.json()["rendered"] == [
        {"tenant": "acme", "department": "legal", "system": "You review EU contracts for acme."}
    ]
    one = admin.post(
        "/admin/v1/templates/validate",
        json={"name": "acme/legal", "tenant": "acme", "department": "legal", "variables": {"region": "US"}},
    )
    assert one.json()["rendered"][0]["system"] == "You review US contracts for acme."

    path = admin_world.settings.prompts_dir / "acme" / "draft.yaml"
    path.write_text(textwrap.dedent('version: "1"\nsystem: "Hello {{ customer }}"\n'))
    unused = admin.post("/admin/v1/templates/validate", json={"name": "acme/draft"})
    assert_envelope(unused, 400, param="name", code="invalid_template")
    assert "customer" in unused.json()["error"]["message"]
    given = admin.post(
        "/admin/v1/templates/validate", json={"name": "acme/draft", "variables": {"customer": "Bo"}}
    )
    assert given.json()["rendered"] == [{"tenant": None, "department": None, "system": "Hello Bo"}]

    path.write_text("version: 1.5\n")  # a version YAML reads as a number
    assert_envelope(
        admin.post("/admin/v1/templates/validate", json={"name": "acme/draft"}), 400, param="name"
    )
    for body, status, param in [
        ({"name": "acme/missing"}, 400, "name"),
        ({"name": "../etc/passwd"}, 400, "name"),
        ({"name": "acme/it", "tenant": "initech"}, 404, "tenant"),
        ({"name": "acme/it", "tenant": "acme", "department": "sales"}, 404, "department"),
        ({"name": "acme/it", "department": "it"}, 400, "tenant"),
    ]:
        assert_envelope(admin.post("/admin/v1/templates/validate", json=body), status, param=param)
