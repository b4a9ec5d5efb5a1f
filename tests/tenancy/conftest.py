"""Fixtures: the two tenants of ``helpers.TENANTS_YAML`` on disk, a key store and the tenancy on them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from service.keys import KeyStore
from service.tenancy import Principal, Tenancy, TenantDirectory

from .helpers import BASE, BOOTSTRAP, TENANTS_YAML, PrincipalFactory, write


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    return write(tmp_path / "tenants.yaml", TENANTS_YAML)


@pytest.fixture
def directory(tenants_file: Path) -> TenantDirectory:
    return TenantDirectory(tenants_file, BASE)


@pytest.fixture
def store(tmp_path: Path, directory: TenantDirectory) -> KeyStore:
    return KeyStore(tmp_path / "keys.json", directory)


@pytest.fixture
def tenancy(directory: TenantDirectory, store: KeyStore) -> Tenancy:
    return Tenancy(directory, store, BASE, SecretStr(BOOTSTRAP))


@pytest.fixture
def principal(tenancy: Tenancy, store: KeyStore) -> PrincipalFactory:
    """``principal("acme", "hr")``: a new key of that tenant (pinned to the department, if given), in use."""

    def make(tenant: str, department: str | None = None) -> Principal:
        _, key = store.create(tenant, department)
        return tenancy.authenticate(f"Bearer {key}")

    return make
