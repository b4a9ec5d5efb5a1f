"""The tenants file: loading, validation errors naming the file, hot reload, the broken-file fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service.errors import NotFoundError
from service.tenancy import DEFAULT_DEPARTMENT, DEFAULT_TENANT, TenantDirectory, TenantsFileError

from .helpers import BASE, TENANTS_YAML, adapters_of, write


def test_loads_tenants_departments_and_caps(directory: TenantDirectory) -> None:
    assert [t.name for t in directory.all()] == ["acme", "globex"]
    acme = directory.get("acme")
    assert acme is not None
    assert (acme.default_department, acme.max_tokens, dict(acme.variables)) == (
        "it",
        256,
        {"company": "ACME"},
    )
    assert set(acme.departments) == {"it", "hr", "finance"}
    it = acme.departments["it"]
    assert (it.name, it.adapter, it.template, dict(it.variables)) == (
        "it",
        "acme-it",
        "acme/it",
        {"tool": "Jira"},
    )
    hr = acme.departments["hr"]
    assert (hr.adapter, hr.template) == (None, "acme/hr")
    assert (
        acme.adapters
        == frozenset(adapters_of("acme"))
        == {"acme-it", "acme-finance", "acme-extra", "shared-faq"}
    )
    globex = directory.get("globex")
    assert globex is not None and globex.max_tokens is None
    research = globex.departments["research"]  # "research:" with nothing under it
    assert (research.adapter, research.template, dict(research.variables)) == (None, None, {})
    assert directory.get("initech") is None


def test_loaded_tenants_cannot_be_changed(directory: TenantDirectory) -> None:
    acme = directory.get("acme")
    assert acme is not None
    with pytest.raises(TypeError):
        acme.departments["it"] = acme.departments["hr"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        acme.max_tokens = 10**6  # type: ignore[misc]


def test_one_department_needs_no_default(tmp_path: Path) -> None:
    path = write(tmp_path / "t.yaml", "tenants:\n  solo:\n    departments:\n      ops: {max_tokens: 1}\n")
    with pytest.raises(TenantsFileError, match="max_tokens"):  # department fields are checked too
        TenantDirectory(path, BASE)
    write(path, "tenants:\n  solo:\n    departments:\n      ops: {adapter: solo-ops}\n")
    solo = TenantDirectory(path, BASE).get("solo")
    assert solo is not None and solo.default_department == "ops" and solo.adapters == {"solo-ops"}


TWO_DEPARTMENTS = "tenants:\n  acme:\n    departments: {it: {}, hr: {}}\n"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        pytest.param("tenants: {}\n", "tenants", id="no-tenants"),
        pytest.param("- a\n- list\n", "valid dictionary", id="not-a-mapping"),
        pytest.param("", "valid dictionary", id="empty"),
        pytest.param("tenants: [\n", "not valid YAML", id="yaml-syntax"),
        pytest.param(TWO_DEPARTMENTS, "default_department is required", id="no-default"),
        pytest.param(
            TWO_DEPARTMENTS.replace("departments:", "default_department: ops\n    departments:"),
            "'ops' is not one of its departments",
            id="default-elsewhere",
        ),
        pytest.param("tenants:\n  acme:\n    departments: {}\n", "departments", id="no-departments"),
        pytest.param(
            "tenants:\n  Acme Corp:\n    departments: {it: {}}\n", "tenants.Acme Corp", id="tenant-name"
        ),
        pytest.param(
            "tenants:\n  a:\n    departments: {it: {adapter: ../x}}\n", "adapter", id="adapter-path"
        ),
        pytest.param(
            "tenants:\n  a:\n    departments: {it: {template: ../../etc}}\n", "template", id="template"
        ),
        pytest.param(
            "tenants:\n  a:\n    departments: {it: {template: /etc/x}}\n", "template", id="template-abs"
        ),
        pytest.param("tenants:\n  a:\n    max_tokns: 5\n    departments: {it: {}}\n", "max_tokns", id="typo"),
        pytest.param(
            "tenants:\n  a:\n    max_tokens: 0\n    departments: {it: {}}\n", "max_tokens", id="cap"
        ),
        pytest.param(
            f"tenants:\n  a:\n    adapters: [{BASE}]\n    departments: {{it: {{}}}}\n",
            "base model",
            id="base-alias",
        ),
    ],
)
def test_invalid_files_are_refused_naming_the_file(tmp_path: Path, text: str, named: str) -> None:
    path = write(tmp_path / "tenants.yaml", text)
    with pytest.raises(TenantsFileError) as caught:
        TenantDirectory(path, BASE)
    assert str(caught.value).startswith(f"{path}: ")
    assert named in str(caught.value)


def test_a_missing_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(TenantsFileError, match="cannot read"):
        TenantDirectory(tmp_path / "absent.yaml", BASE)


def test_edits_are_picked_up_without_restart(tenants_file: Path, directory: TenantDirectory) -> None:
    assert directory.get("initech") is None
    edited = TENANTS_YAML.replace("adapter: acme-it,", "adapter: acme-it-v2,")
    write(tenants_file, edited + "  initech:\n    departments: {ops: {}}\n")
    acme = directory.get("acme")
    assert acme is not None and acme.departments["it"].adapter == "acme-it-v2"
    assert "acme-it" not in acme.adapters and directory.has_adapter("acme-it-v2")
    assert directory.get("initech") is not None and directory.has_department("ops")


def test_a_broken_edit_keeps_the_previous_version(
    tenants_file: Path, directory: TenantDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.tenancy")
    write(tenants_file, TENANTS_YAML.replace("max_tokens: 256", "max_tokens: lots"))
    for _ in range(3):
        acme = directory.get("acme")
        assert acme is not None and acme.max_tokens == 256
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # once per broken version, not once per request
    message = errors[0].getMessage()
    assert str(tenants_file) in message and "max_tokens" in message and "previous version" in message

    write(tenants_file, TENANTS_YAML.replace("max_tokens: 256", "max_tokens: 128"))
    acme = directory.get("acme")
    assert acme is not None and acme.max_tokens == 128
    assert any("reloaded" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_a_deleted_file_keeps_the_previous_version(
    tenants_file: Path, directory: TenantDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    tenants_file.unlink()
    assert [t.name for t in directory.all()] == ["acme", "globex"]
    assert any(str(tenants_file) in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_single_tenant_mode_has_one_builtin_tenant() -> None:
    directory = TenantDirectory(None, BASE)
    (tenant,) = directory.all()
    assert (tenant.name, tenant.default_department, tenant.adapters, tenant.max_tokens) == (
        DEFAULT_TENANT,
        DEFAULT_DEPARTMENT,
        frozenset(),
        None,
    )
    general = tenant.departments[DEFAULT_DEPARTMENT]
    assert (general.adapter, general.template) == (None, None)
    directory.check_scope(DEFAULT_TENANT, DEFAULT_DEPARTMENT)
    with pytest.raises(NotFoundError, match="no tenant 'acme'"):
        directory.check_scope("acme", None)


@pytest.mark.parametrize(
    ("tenant", "department", "named"),
    [("initech", None, "no tenant 'initech'"), ("acme", "legal", "no department 'legal'")],
)
def test_check_scope_names_the_file(
    directory: TenantDirectory, tenants_file: Path, tenant: str, department: str | None, named: str
) -> None:
    directory.check_scope("globex", "legal")
    with pytest.raises(NotFoundError) as caught:
        directory.check_scope(tenant, department)
    assert str(tenants_file) in caught.value.message and named in caught.value.message


def test_the_example_file_in_the_repo_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "prompts" / "tenants.example.yaml"
    directory = TenantDirectory(example, "SmolLM2-135M-Instruct")
    acme = directory.get("acme")
    assert acme is not None and acme.default_department == "it" and acme.max_tokens == 512
    assert acme.adapters == {"acme-it", "acme-legal", "acme-support-v2"}
    assert (acme.departments["hr"].adapter, acme.departments["hr"].template) == (None, None)
    assert [t.name for t in directory.all()] == ["acme", "globex"]
    # every template the example names is in the repo and loads
    from service.prompts import TemplateStore

    store = TemplateStore(example.parent)
    named = [d.template for t in directory.all() for d in t.departments.values() if d.template]
    assert named and all(store.get(name).version for name in named)
