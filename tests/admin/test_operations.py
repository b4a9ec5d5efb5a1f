"""The shared operations on their own: the cases a running gateway cannot show (no tenants file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.admin import operations as ops
from service.errors import InvalidRequestError, NotFoundError
from service.keys import KeyStore
from service.prompts import TemplateStore
from service.registry import Registry
from service.tenancy import TenantDirectory


def test_single_tenant_mode(tmp_path: Path) -> None:
    directory = TenantDirectory(None, "base")
    keys = KeyStore(tmp_path / "keys.json", directory)
    with pytest.raises(InvalidRequestError) as reload:
        ops.reload_tenants(directory)
    assert reload.value.code == "no_tenants_file"
    with pytest.raises(InvalidRequestError) as validate:
        ops.validate_tenants(directory, Registry(tmp_path / "r", "base"), TemplateStore(tmp_path))
    assert validate.value.param == "yaml"

    done = ops.create_key(keys, "default")
    assert done.change.action == "keys.create" and done.change.after["tenant"] == "default"
    with pytest.raises(NotFoundError) as missing:
        ops.create_key(keys, "acme")
    assert (missing.value.param, missing.value.code) == ("tenant", "tenant_not_found")
    scopes = ops.limit_scopes(directory, keys, key="bootstrap")
    assert [(s.kind, s.name, s.limits) for s in scopes] == [("key", "bootstrap", None)]
    assert ops.limit_scopes(directory, keys) == []  # nothing has limits


def test_an_audit_entry_is_timestamped_in_utc() -> None:
    entry = ops.Change("keys.revoke", "key_1", {"revoked": False}, {"revoked": True}).entry("admin:0")
    assert entry.time.tzinfo is not None and entry.actor == "admin:0"
    assert (entry.before, entry.after) == ({"revoked": False}, {"revoked": True})
