"""/admin/v1/usage (the ledger's report), /admin/v1/audit (filters) and /admin/v1/limits (counters)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from ..api.helpers import assert_envelope
from .conftest import Admin


def test_usage_rows_after_requests(admin_world: Admin) -> None:
    admin = admin_world.admin
    created = admin.post("/admin/v1/keys", json={"tenant": "acme", "department": "legal"}).json()
    for _ in range(3):
        assert admin_world.chat(created["key"]).status_code == 200
    today = datetime.now(UTC).date().isoformat()
    report = admin.get("/admin/v1/usage", params={"since": today, "by": "key"})
    assert report.status_code == 200, report.text
    assert report.json()["by"] == "key" and report.json()["until"] is None
    row = next(r for r in report.json()["data"] if r["key_id"] == created["id"])
    assert (row["tenant"], row["requests"], row["errors"]) == ("acme", 3, 0)
    assert row["prompt_tokens"] > 0 and row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]

    by_department = admin.get("/admin/v1/usage", params={"by": "department"})  # since: this month
    legal = next(r for r in by_department.json()["data"] if r["department"] == "legal")
    assert legal["tenant"] == "acme" and legal["requests"] >= 3

    table = admin.get("/admin/v1/usage", params={"since": today, "by": "tenant", "format": "csv"})
    assert table.headers["content-type"].startswith("text/csv")
    assert any(r["tenant"] == "acme" for r in csv.DictReader(io.StringIO(table.text)))
    assert admin.get("/admin/v1/usage", params={"since": "2999-01-01"}).json()["data"] == []

    for params, param in [
        ({"by": "model"}, "by"),
        ({"since": "last tuesday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"format": "xml"}, "format"),
    ]:
        assert_envelope(admin.get("/admin/v1/usage", params=params), 400, param=param)


def test_audit_filters(admin_world: Admin) -> None:
    admin = admin_world.admin
    start = datetime.now(UTC).isoformat()
    key_id = admin.post("/admin/v1/keys", json={"tenant": "globex"}).json()["id"]
    admin.delete(f"/admin/v1/keys/{key_id}")
    recent = admin_world.audit(since=start)
    assert [(e["action"], e["target"]) for e in recent] == [("keys.create", key_id), ("keys.revoke", key_id)]
    assert all(e["actor"].startswith("admin:") and e["time"] >= start for e in recent)
    assert admin_world.audit(since=start, action="keys.revoke")[0]["target"] == key_id
    assert admin_world.audit(since=start, actor="cli:nobody") == []
    assert len(admin_world.audit(limit=1)) == 1
    assert admin_world.audit(until="2000-01-01") == []
    for params, param in [({"limit": 0}, "limit"), ({"since": "soon"}, "since")]:
        assert_envelope(admin.get("/admin/v1/audit", params=params), 400, param=param)


def test_limit_counters(admin_world: Admin) -> None:
    admin = admin_world.admin
    before = admin.get("/admin/v1/limits", params={"tenant": "acme", "department": "it"})
    assert before.status_code == 200, before.text
    assert admin_world.chat(admin_world.tenant_keys["acme"], "it").status_code == 200
    after = admin.get("/admin/v1/limits", params={"tenant": "acme", "department": "it"}).json()["data"]
    assert [(s["scope"], s["name"]) for s in after] == [("tenant", "acme"), ("department", "acme/it")]
    tenant, department = after
    assert tenant["limits"] == {"tokens_per_month": 10000000}
    assert department["usage"]["concurrent"] == 0
    assert department["usage"]["tokens_today"] > before.json()["data"][1]["usage"]["tokens_today"]
    assert department["usage"]["requests_remaining"] < 10
    assert tenant["usage"]["tokens_this_month"] >= department["usage"]["tokens_today"]
    assert tenant["usage"]["requests_remaining"] is None  # no such limit on the tenant

    whole = admin.get("/admin/v1/limits", params={"tenant": "acme"}).json()["data"]
    assert [s["name"] for s in whole] == ["acme", "acme/it", "acme/legal"]
    assert whole[2]["limits"] is None and whole[2]["usage"] is None
    everything = admin.get("/admin/v1/limits").json()["data"]
    assert [s["name"] for s in everything] == ["acme", "acme/it"]  # the scopes that have limits

    for params, status, param in [
        ({"tenant": "initech"}, 404, "tenant"),
        ({"tenant": "acme", "department": "sales"}, 404, "department"),
        ({"department": "it"}, 400, "tenant"),
    ]:
        assert_envelope(admin.get("/admin/v1/limits", params=params), status, param=param)
