"""Authentication, the selection rule, and isolation between tenants (table-driven over every combination)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from service.errors import (
    AuthenticationError,
    LoragateError,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
)
from service.keys import KeyStore
from service.tenancy import (
    BOOTSTRAP_KEY_ID,
    DEFAULT_DEPARTMENT,
    MISSING_KEY,
    WRONG_KEY,
    Tenancy,
    TenantDirectory,
)

from .helpers import BASE, BOOTSTRAP, SPEC, TENANTS_YAML, PrincipalFactory, adapters_of, departments_of, write

TENANTS = sorted(SPEC)
DEPARTMENT_CASES = [
    (me, owner, d) for me in TENANTS for owner in TENANTS for d in sorted(departments_of(owner))
]
ADAPTER_CASES = [(me, owner, a) for me in TENANTS for owner in TENANTS for a in sorted(adapters_of(owner))]


def _denial(call: Callable[..., object], *args: object) -> LoragateError:
    with pytest.raises(LoragateError) as caught:
        call(*args)
    return caught.value


@pytest.mark.parametrize(("me", "owner", "department"), DEPARTMENT_CASES)
def test_departments_are_isolated(
    tenancy: Tenancy, principal: PrincipalFactory, me: str, owner: str, department: str
) -> None:
    who = principal(me)
    if department in departments_of(me):  # its own (a name both tenants use included)
        route = tenancy.route(who, department, BASE)
        assert route.tenant.name == me and route.department is who.tenant.departments[department]
        assert route.adapter == (SPEC[me]["departments"][department] or {}).get("adapter")
        return
    error = _denial(tenancy.route, who, department, BASE)
    assert isinstance(error, PermissionDeniedError) and error.code == "permission_denied"
    assert error.message == f"The department `{department}` is not available to this API key."
    spec = SPEC[owner]["departments"][department] or {}
    for secret in (owner, spec.get("adapter"), spec.get("template")):
        assert secret is None or secret not in error.message.replace(department, "")


@pytest.mark.parametrize(("me", "owner", "alias"), ADAPTER_CASES)
def test_adapters_are_isolated(
    tenancy: Tenancy, principal: PrincipalFactory, me: str, owner: str, alias: str
) -> None:
    who = principal(me)
    if alias in adapters_of(me):
        route = tenancy.route(who, None, alias)
        assert route.adapter == alias and route.department.name == SPEC[me]["default_department"]
        assert alias in tenancy.visible_models(who)
        return
    assert alias not in tenancy.visible_models(who)
    error = _denial(tenancy.route, who, None, alias)
    assert isinstance(error, PermissionDeniedError) and error.param == "model"
    assert error.message == f"The model `{alias}` is not available to this API key."
    assert owner not in error.message.replace(alias, "")  # the name it asked for is all it hears back


@pytest.mark.parametrize("me", TENANTS)
def test_visible_models_are_the_base_then_the_tenants_aliases(
    tenancy: Tenancy, principal: PrincipalFactory, me: str
) -> None:
    for who in (principal(me), principal(me, SPEC[me]["default_department"])):
        assert tenancy.visible_models(who) == [BASE, *sorted(adapters_of(me))]


@pytest.mark.parametrize("me", TENANTS)
@pytest.mark.parametrize(
    ("header", "model", "error", "code"),
    [
        ("nowhere", BASE, NotFoundError, "department_not_found"),
        (None, "gpt-4o", ModelNotFoundError, "model_not_found"),
        (None, "acme-it-v9", ModelNotFoundError, "model_not_found"),
        (None, "Base-Model", ModelNotFoundError, "model_not_found"),
    ],
)
def test_unknown_names_get_404(
    tenancy: Tenancy,
    principal: PrincipalFactory,
    me: str,
    header: str | None,
    model: str,
    error: type[LoragateError],
    code: str,
) -> None:
    caught = _denial(tenancy.route, principal(me), header, model)
    assert type(caught) is error and caught.status_code == 404 and caught.code == code


@pytest.mark.parametrize(
    ("pinned", "header", "department"),
    [
        (None, None, "it"),  # the tenant's default
        ("hr", None, "hr"),  # the key's pinned department
        (None, "finance", "finance"),  # the header
        ("hr", "hr", "hr"),  # a header that names the pinned department
        (None, "  HR ", "hr"),  # header values are trimmed and case-insensitive
        ("finance", "", "finance"),  # an empty header is no header
    ],
)
def test_header_then_pinned_then_default(
    tenancy: Tenancy, principal: PrincipalFactory, pinned: str | None, header: str | None, department: str
) -> None:
    assert tenancy.route(principal("acme", pinned), header, BASE).department.name == department


@pytest.mark.parametrize("header", ["it", "finance", "legal", "research"])
def test_a_pinned_key_cannot_name_another_department(
    tenancy: Tenancy, principal: PrincipalFactory, header: str
) -> None:
    error = _denial(tenancy.route, principal("acme", "hr"), header, BASE)
    assert isinstance(error, PermissionDeniedError)
    # the same words for its own tenant's departments as for another tenant's: nothing to tell them apart
    assert error.message == f"The department `{header}` is not available to this API key."


@pytest.mark.parametrize(
    ("header", "model", "adapter", "template"),
    [
        ("it", BASE, "acme-it", "acme/it"),  # base model: the department's adapter
        ("hr", BASE, None, "acme/hr"),  # a department without adapter: the base model, L1 only
        ("finance", BASE, "acme-finance", None),  # an adapter without template
        ("hr", "acme-it", "acme-it", "acme/hr"),  # explicit model wins; the department keeps the template
        ("it", "acme-extra", "acme-extra", "acme/it"),  # a tenant-level alias
        ("finance", "shared-faq", "shared-faq", None),  # an alias two tenants may use
        (None, "acme-finance", "acme-finance", "acme/it"),  # the default department's template
    ],
)
def test_header_and_model(
    tenancy: Tenancy,
    principal: PrincipalFactory,
    header: str | None,
    model: str,
    adapter: str | None,
    template: str | None,
) -> None:
    route = tenancy.route(principal("acme"), header, model)
    assert (route.adapter, route.department.template, route.tenant.name) == (adapter, template, "acme")


def test_the_shared_department_name_is_each_tenants_own(
    tenancy: Tenancy, principal: PrincipalFactory
) -> None:
    acme, globex = (
        tenancy.route(principal("acme"), "hr", BASE),
        tenancy.route(principal("globex"), "hr", BASE),
    )
    assert (acme.department.template, acme.adapter) == ("acme/hr", None)
    assert (globex.department.template, globex.adapter) == ("globex/hr", "globex-hr")
    assert tenancy.route(principal("acme"), None, BASE).tenant.max_tokens == 256


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, MISSING_KEY),
        ("", MISSING_KEY),
        ("Bearer ", MISSING_KEY),
        (f"Basic {BOOTSTRAP}", MISSING_KEY),
        ("Bearer lg-not-a-key", WRONG_KEY),
        (f"Bearer {BOOTSTRAP}x", WRONG_KEY),
    ],
)
def test_authentication_failures(tenancy: Tenancy, authorization: str | None, message: str) -> None:
    error = _denial(tenancy.authenticate, authorization)
    assert isinstance(error, AuthenticationError) and error.message == message


def test_keys_authenticate_as_their_tenant_until_revoked(tenancy: Tenancy, store: KeyStore) -> None:
    key_id, key = store.create("globex", "legal")
    who = tenancy.authenticate(f"bearer  {key} ")
    assert (who.key_id, who.tenant.name, who.pinned_department) == (key_id, "globex", "legal")
    store.revoke(key_id)
    assert _denial(tenancy.authenticate, f"Bearer {key}").message == WRONG_KEY


def test_keys_from_another_process_work_at_once(
    tenancy: Tenancy, store: KeyStore, directory: TenantDirectory
) -> None:
    key_id, key = KeyStore(store.path, directory).create("acme")  # as `loragate keys create` would
    assert tenancy.authenticate(f"Bearer {key}").key_id == key_id


def test_a_tenant_removed_from_the_file_locks_its_keys_out(
    tenancy: Tenancy, store: KeyStore, tenants_file: Path
) -> None:
    _, key = store.create("globex")
    assert tenancy.authenticate(f"Bearer {key}").tenant.name == "globex"
    write(tenants_file, TENANTS_YAML.split("  globex:")[0])
    error = _denial(tenancy.authenticate, f"Bearer {key}")
    assert isinstance(error, AuthenticationError) and "globex" not in error.message


def test_single_tenant_mode_with_the_bootstrap_key(tmp_path: Path) -> None:
    directory = TenantDirectory(None, BASE)
    tenancy = Tenancy(directory, KeyStore(tmp_path / "keys.json", directory), BASE, SecretStr(BOOTSTRAP))
    who = tenancy.authenticate(f"Bearer {BOOTSTRAP}")
    assert (who.key_id, who.tenant.name, who.pinned_department) == (BOOTSTRAP_KEY_ID, "default", None)
    route = tenancy.route(who, None, BASE)
    assert (route.department.name, route.adapter, route.department.template) == (
        DEFAULT_DEPARTMENT,
        None,
        None,
    )
    assert tenancy.visible_models(who) == [BASE]
    assert isinstance(_denial(tenancy.route, who, "it", BASE), NotFoundError)
    assert isinstance(_denial(tenancy.route, who, None, "acme-it"), ModelNotFoundError)
    _, key = tenancy.keys.create("default", DEFAULT_DEPARTMENT)  # store keys work in single-tenant mode too
    assert tenancy.authenticate(f"Bearer {key}").tenant.name == "default"


def test_without_a_bootstrap_key_only_store_keys_work(directory: TenantDirectory, store: KeyStore) -> None:
    tenancy = Tenancy(directory, store, BASE, None)
    assert _denial(tenancy.authenticate, f"Bearer {BOOTSTRAP}").message == WRONG_KEY


def test_the_bootstrap_key_takes_the_files_default_tenant(
    tmp_path: Path, tenancy: Tenancy, store: KeyStore
) -> None:
    builtin = tenancy.authenticate(f"Bearer {BOOTSTRAP}")  # the file has no `default`: the built-in one
    assert builtin.tenant.name == "default" and set(builtin.tenant.departments) == {DEFAULT_DEPARTMENT}
    error = _denial(tenancy.route, builtin, "it", BASE)  # it is acme's: no way in, same 403 as anyone's
    assert isinstance(error, PermissionDeniedError) and "acme" not in error.message
    path = write(
        tmp_path / "with-default.yaml",
        TENANTS_YAML + "  default:\n    departments: {ops: {adapter: ops-v1}}\n",
    )
    directory = TenantDirectory(path, BASE)
    tenancy = Tenancy(directory, store, BASE, SecretStr(BOOTSTRAP))
    who = tenancy.authenticate(f"Bearer {BOOTSTRAP}")
    assert who.tenant.default_department == "ops" and tenancy.visible_models(who) == [BASE, "ops-v1"]
    assert tenancy.route(who, None, BASE).adapter == "ops-v1"
