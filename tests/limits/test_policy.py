"""Where limits are declared: the tenants file (tenant and department) and a key's own, in the keys file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from service.keys import KeyStore
from service.limits import Limits, Scope, request_scopes
from service.tenancy import Tenancy, TenantDirectory, TenantsFileError

TENANTS = """\
tenants:
  acme:
    default_department: it
    limits: {requests_per_minute: 600, tokens_per_minute: 100_000, tokens_per_month: 50_000_000}
    departments:
      it:
        limits: {requests_per_minute: 60, concurrent_requests: 4, tokens_per_day: 1_000_000}
      hr: {}
  globex:
    departments:
      legal:
"""


@pytest.fixture
def directory(tmp_path: Path) -> TenantDirectory:
    path = tmp_path / "tenants.yaml"
    path.write_text(TENANTS)
    return TenantDirectory(path, "base-model")


def test_tenants_file_declares_tenant_and_department_limits(directory: TenantDirectory) -> None:
    acme = directory.get("acme")
    assert acme is not None
    assert acme.limits == Limits(
        requests_per_minute=600, tokens_per_minute=100_000, tokens_per_month=50_000_000
    )
    assert acme.departments["it"].limits == Limits(
        requests_per_minute=60, concurrent_requests=4, tokens_per_day=1_000_000
    )
    assert acme.departments["hr"].limits is None  # absent: unlimited
    globex = directory.get("globex")
    assert globex is not None and globex.limits is None and globex.departments["legal"].limits is None


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ("{requests_per_minute: 0}", "greater than or equal to 1"),
        ("{requests_per_minute: -5}", "greater than or equal to 1"),
        ("{tokens_per_week: 10}", "tokens_per_week"),
        ("{tokens_per_day: lots}", "valid integer"),
        ("[60]", "valid dictionary"),
    ],
)
def test_a_bad_limits_block_is_refused(tmp_path: Path, block: str, problem: str) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(f"tenants:\n  acme:\n    departments:\n      it:\n        limits: {block}\n")
    with pytest.raises(TenantsFileError, match=problem) as caught:
        TenantDirectory(path, "base-model").all()
    assert "tenants.acme.departments.it.limits" in str(caught.value)


def test_an_empty_limits_block_is_no_limit(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  acme:\n    limits: {}\n    departments:\n      it: {limits: {}}\n")
    acme = TenantDirectory(path, "base-model").get("acme")
    assert acme is not None and acme.limits is None and acme.departments["it"].limits is None


def test_a_key_carries_its_own_limits(tmp_path: Path, directory: TenantDirectory) -> None:
    store = KeyStore(tmp_path / "keys.json", directory)
    limited_id, limited = store.create(
        "acme", "it", limits=Limits(requests_per_minute=10, tokens_per_day=5000)
    )
    plain_id, plain = store.create("acme")
    stored = {item["id"]: item for item in json.loads(store.path.read_text())["keys"]}
    assert stored[limited_id]["limits"] == {"requests_per_minute": 10, "tokens_per_day": 5000}
    assert "limits" not in stored[plain_id]  # a key without limits is stored as before

    tenancy = Tenancy(directory, KeyStore(store.path, directory), "base-model", SecretStr("sk-" + "b" * 30))
    assert tenancy.authenticate(f"Bearer {limited}").limits == Limits(
        requests_per_minute=10, tokens_per_day=5000
    )
    assert tenancy.authenticate(f"Bearer {plain}").limits is None
    assert tenancy.authenticate("Bearer sk-" + "b" * 30).limits is None  # the bootstrap key
    listed = {r.key_id: r.limits for r in store.list()}
    assert listed == {limited_id: Limits(requests_per_minute=10, tokens_per_day=5000), plain_id: None}


def test_limits_survive_other_changes_to_the_keys_file(tmp_path: Path, directory: TenantDirectory) -> None:
    store = KeyStore(tmp_path / "keys.json", directory)
    key_id, _ = store.create("acme", limits=Limits(concurrent_requests=2))
    other_id, _ = store.create("globex")
    store.revoke(other_id)
    stored = {item["id"]: item for item in json.loads(store.path.read_text())["keys"]}
    assert stored[key_id]["limits"] == {"concurrent_requests": 2}


def test_limits_parse() -> None:
    assert Limits.parse(None) is None
    assert Limits.parse({}) is None
    assert Limits.parse({"tokens_per_month": 7}) == Limits(tokens_per_month=7)
    assert Limits(tokens_per_month=7).to_dict() == {"tokens_per_month": 7}
    assert not Limits() and Limits(concurrent_requests=1)
    with pytest.raises(ValidationError):
        Limits.parse({"requests_per_minute": 0})
    with pytest.raises(ValidationError):
        Limits.parse({"rpm": 5})


def test_request_scopes_narrowest_first_and_only_those_with_limits() -> None:
    key, dept, tenant = Limits(requests_per_minute=1), Limits(tokens_per_day=2), Limits(concurrent_requests=3)
    scopes = request_scopes("acme", tenant, "it", dept, "key_1", key)
    assert scopes == (
        Scope("key", "key_1", "acme", key),
        Scope("department", "acme/it", "acme", dept),
        Scope("tenant", "acme", "acme", tenant),
    )
    assert [s.id for s in scopes] == ["k:key_1", "d:acme/it", "t:acme"]
    assert [s.describe() for s in scopes] == ["API key key_1", "department it", "tenant acme"]
    assert request_scopes("acme", None, "it", dept, "key_1", None) == (scopes[1],)
    assert request_scopes("acme", None, "it", None, "key_1", None) == ()
