"""What an administrator can do: one implementation, called by the admin API and the ``loragate`` command.

Each operation is a plain blocking function over the deployment's objects (the key store, the tenants
directory, the registry, a template store): the API runs it in a worker thread, the command calls it.
An operation that changes something returns ``Done(value, change)``: ``change`` is what the audit log
records (``Change.entry(actor)``); the caller writes it, through the ledger's writer in the gateway or
straight into the database from the command (``service.admin.audit``).

Errors are the gateway's (``service.errors``): ``InvalidRequestError`` (400, with the ``param`` at
fault) for input that cannot be used, ``NotFoundError`` (404) for an id, tenant, alias or adapter
that does not exist. The command prints their message; the API renders them as every route does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from ..errors import EngineUnavailableError, InvalidRequestError, NotFoundError
from ..keys import KeyDirectory, KeyRecord
from ..ledger.records import JSON, AuditEntry
from ..limits.policy import Limits, Scope, ScopeKind
from ..prompts import TemplateError, TemplateStore
from ..registry import Adapter, AdapterRejected, Registry, RegistryUnavailable
from ..tenancy import (
    BOOTSTRAP_KEY_ID,
    DEFAULT_TENANT,
    NAME_PATTERN,
    Department,
    Tenant,
    TenantDirectory,
    TenantsFileError,
    builtin_tenant,
    parse_tenants,
)

T = TypeVar("T")
ADAPTER_NAME = re.compile(NAME_PATTERN)  # the registry's names, as its manifests require them


@dataclass(frozen=True, slots=True)
class Change:
    """One change as the audit log keeps it: ``action`` on ``target``, its state ``before`` and ``after``."""

    action: str  # "keys.create", "keys.revoke", "tenants.reload", "adapters.publish|promote|rollback"
    target: str
    before: JSON
    after: JSON

    def entry(self, actor: str, time: datetime | None = None) -> AuditEntry:
        return AuditEntry(
            time=time or datetime.now(UTC),
            actor=actor,
            action=self.action,
            target=self.target,
            before=self.before,
            after=self.after,
        )


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """What an operation that changed something returns: its result and the change to audit."""

    value: T
    change: Change


# -- API keys ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NewKey:
    key: str  # the secret: shown once, stored nowhere
    record: KeyRecord


def key_view(record: KeyRecord) -> dict[str, Any]:
    """A key's record as the API and the audit log show it: never the key or its hash."""
    return {
        "id": record.key_id,
        "tenant": record.tenant,
        "department": record.department,
        "created": record.created,
        "revoked": record.revoked,
        "limits": record.limits.to_dict() if record.limits else None,
    }


def create_key(
    keys: KeyDirectory, tenant: str, department: str | None = None, limits: Limits | None = None
) -> Done[NewKey]:
    """A new key of ``tenant`` (pinned to ``department``, with its own ``limits``, when given)."""
    _check_scope(keys, tenant, department)
    key_id, key = keys.create(tenant, department, limits)
    record = find_key(keys, key_id)
    return Done(NewKey(key, record), Change("keys.create", key_id, None, key_view(record)))


def revoke_key(keys: KeyDirectory, key_id: str) -> Done[KeyRecord]:
    """The key stops working on the next request; revoking a revoked key changes nothing, and says so."""
    before = find_key(keys, key_id)
    after = keys.revoke(key_id)
    return Done(after, Change("keys.revoke", key_id, key_view(before), key_view(after)))


def list_keys(keys: KeyDirectory) -> list[KeyRecord]:
    return keys.list()


def find_key(keys: KeyDirectory, key_id: str) -> KeyRecord:
    for record in keys.list():
        if record.key_id == key_id:
            return record
    raise NotFoundError(f"There is no API key with id {key_id!r}.", param="key_id", code="key_not_found")


def _check_scope(keys: KeyDirectory, tenant: str, department: str | None) -> None:
    try:
        keys.tenants.check_scope(tenant, department)
    except NotFoundError as exc:
        directory = keys.tenants
        missing_tenant = isinstance(directory, TenantDirectory) and directory.get(tenant) is None
        param = "tenant" if missing_tenant else "department"
        raise NotFoundError(exc.message, param=param, code=f"{param}_not_found") from None


# -- tenants and templates -----------------------------------------------------------------------------
def tenant_view(tenant: Tenant) -> dict[str, Any]:
    """A tenant as the API and the audit log show it (template variables left out)."""
    return {
        "default_department": tenant.default_department,
        "departments": {
            d.name: {
                "adapter": d.adapter,
                "template": d.template,
                "limits": d.limits.to_dict() if d.limits else None,
            }
            for d in sorted(tenant.departments.values(), key=lambda d: d.name)
        },
        "adapters": sorted(tenant.adapters),
        "max_tokens": tenant.max_tokens,
        "limits": tenant.limits.to_dict() if tenant.limits else None,
    }


def tenants_view(tenants: list[Tenant]) -> dict[str, Any]:
    return {t.name: tenant_view(t) for t in sorted(tenants, key=lambda t: t.name)}


def reload_tenants(directory: TenantDirectory) -> Done[dict[str, Any]]:
    """Read the tenants file now (with the shared database: its newest version); a broken one is a
    400 naming its problems, the previous stays in force."""
    if not directory.configured:
        raise InvalidRequestError(
            "Single-tenant mode: there is no tenants file to reload.", code="no_tenants_file"
        )
    try:
        before, after = directory.reload()
    except TenantsFileError as exc:
        raise InvalidRequestError(str(exc), code="invalid_tenants_file") from None
    target = str(directory.path) if directory.path else _tenants_target(directory)
    return Done(
        tenants_view(after), Change("tenants.reload", target, tenants_view(before), tenants_view(after))
    )


def current_tenants(directory: TenantDirectory) -> dict[str, Any]:
    """The tenants in force, where they come from, and the document's text when there is one."""
    try:
        text: str | None = directory.document()
    except TenantsFileError:
        text = None  # single-tenant mode, or a file that cannot be read now (the last good one serves)
    return {
        "source": directory.source,
        "version": directory.version,
        "yaml": text,
        "tenants": tenants_view(directory.all()),
    }


def replace_tenants(
    directory: TenantDirectory, registry: Registry, templates: TemplateStore, text: str, actor: str
) -> Done[dict[str, Any]]:
    """Check ``text`` as ``validate_tenants`` does, then make it the shared tenants document's next
    version, in force on every gateway within seconds. A document that cannot be used is a 400 and
    nothing is stored; ``warnings`` (unknown aliases or templates) do not stop it."""
    if not directory.shared:
        raise InvalidRequestError(
            f"The tenants come from the file {directory.source}: edit it, then POST /admin/v1/tenants/reload."
            " Documents are replaced through the API only when state_url is set.",
            code="tenants_in_file",
        )
    checked = validate_tenants(directory, registry, templates, text)
    try:
        before, after = directory.replace(text, actor)
    except TenantsFileError as exc:  # validated above; a race with a base model change, at most
        raise InvalidRequestError(str(exc), param="yaml", code="invalid_tenants_file") from None
    change = Change("tenants.replace", _tenants_target(directory), tenants_view(before), tenants_view(after))
    body = {"version": directory.version, "tenants": tenants_view(after), "warnings": checked["warnings"]}
    return Done(body, change)


def _tenants_target(directory: TenantDirectory) -> str:
    return f"tenants@{directory.version}" if directory.version else "tenants"


def validate_tenants(
    directory: TenantDirectory, registry: Registry, templates: TemplateStore, text: str | None = None
) -> dict[str, Any]:
    """Check a tenants file (``text``, or the configured file) without applying it.

    Problems that make it unusable are a 400 (``param`` ``yaml`` when posted); departments whose
    adapter alias is not in the registry, or whose template does not load, are ``warnings``:
    the file would be taken, and those departments' requests would fail.
    """
    if text is None:
        if not directory.configured:
            raise InvalidRequestError(
                "Single-tenant mode: there is no tenants file; post one as `yaml`.",
                param="yaml",
                code="no_tenants_file",
            )
        try:
            text = directory.document()
        except TenantsFileError as exc:
            param = None if directory.path else "yaml"  # the database has none yet: post one
            raise InvalidRequestError(str(exc), param=param, code="invalid_tenants_file") from None
        source: object = directory.path or directory.source
    else:
        source = "the posted tenants file"
    try:
        tenants = parse_tenants(text, directory.base_model, source)
    except TenantsFileError as exc:
        param = "yaml" if source == "the posted tenants file" else None
        raise InvalidRequestError(str(exc), param=param, code="invalid_tenants_file") from None
    aliases = registry.aliases()
    warnings = []
    for tenant in sorted(tenants, key=lambda t: t.name):
        for department in sorted(tenant.departments.values(), key=lambda d: d.name):
            where = f"tenant {tenant.name!r}, department {department.name!r}"
            if department.adapter is not None and department.adapter not in aliases:
                warnings.append(f"{where}: adapter alias {department.adapter!r} is not in the registry")
            if department.template is not None:
                try:
                    templates.get(department.template)
                except TemplateError as exc:
                    warnings.append(f"{where}: template {department.template!r}: {exc}")
    return {"valid": True, "tenants": tenants_view(tenants), "warnings": warnings}


def department_variables(tenant: Tenant, department: Department) -> dict[str, str]:
    """The variables a request of this department renders its template with (as the planner builds them)."""
    return {
        **tenant.variables,
        **department.variables,
        "tenant": tenant.name,
        "department": department.name,
    }


def validate_template(
    templates: TemplateStore,
    directory: TenantDirectory,
    name: str,
    *,
    tenant: str | None = None,
    department: str | None = None,
    variables: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Load template ``name`` from its file as it is now and render it as a request would.

    It renders once per department that uses it (that department's variables), or for the one named
    by ``tenant``/``department``; with none, with ``variables`` alone. A template that does not load
    or render is a 400 naming the file and the reason; nothing is applied either way (the gateway
    picks up template edits on the next request by itself).
    """
    try:
        template = templates.get(name)
    except TemplateError as exc:
        raise InvalidRequestError(str(exc), param="name", code="invalid_template") from None
    targets: list[tuple[Tenant, Department]]
    if tenant is not None:
        found = directory.get(tenant)
        if found is None:
            raise NotFoundError(f"There is no tenant {tenant!r}.", param="tenant", code="tenant_not_found")
        chosen = department or found.default_department
        if chosen not in found.departments:
            raise NotFoundError(
                f"Tenant {tenant!r} has no department {chosen!r}.",
                param="department",
                code="department_not_found",
            )
        targets = [(found, found.departments[chosen])]
    else:
        if department is not None:
            raise InvalidRequestError("Name the department's tenant too.", param="tenant")
        targets = [(t, d) for t in directory.all() for d in t.departments.values() if d.template == name]
    renders: list[tuple[str | None, str | None, dict[str, str]]] = [
        (t.name, d.name, department_variables(t, d) | (variables or {})) for t, d in targets
    ] or [(None, None, dict(variables or {}))]
    rendered = []
    for who, where, values in renders:
        try:
            messages = templates.render(template, [], values)
        except TemplateError as exc:
            scope = f"tenant {who!r}, department {where!r}: " if who else ""
            raise InvalidRequestError(f"{scope}{exc}", param="name", code="invalid_template") from None
        rendered.append({"tenant": who, "department": where, "system": messages[0].content})
    return {
        "name": template.name,
        "version": template.version,
        "ref": template.ref,
        "cot": template.cot,
        "few_shot": len(template.few_shot),
        "rendered": rendered,
    }


# -- adapters -----------------------------------------------------------------------------------------
def adapter_view(adapter: Adapter) -> dict[str, Any]:
    m = adapter.manifest
    return {
        "ref": m.ref,
        "name": m.name,
        "version": m.version,
        "level": m.level,
        "rank": m.rank,
        "base_model": m.base_model,
        "created": m.created,
        "sha256": m.sha256,
    }


@contextmanager
def _registry_reachable() -> Iterator[None]:
    """The registry's storage (an s3:// bucket) cannot be reached: a 503 to retry, not the input's fault."""
    try:
        yield
    except RegistryUnavailable as exc:
        raise EngineUnavailableError(exc.message, code="registry_unavailable") from None


def list_adapters(registry: Registry) -> dict[str, Any]:
    """Every adapter's versions, and every alias with what it serves and its history."""
    with _registry_reachable():
        return {
            "data": [
                {"name": name, "versions": [adapter_view(a) for a in registry.versions(name)]}
                for name in registry.names()
            ],
            "aliases": [
                {"alias": alias, "current": ref, "history": registry.history(alias)}
                for alias, ref in sorted(registry.aliases().items())
            ],
        }


def publish_adapter(registry: Registry, folder: Path, name: str, level: Literal["L2", "L3"]) -> Done[Adapter]:
    """Register a trained PEFT adapter folder (a path on the gateway's host) as the next version of ``name``.

    The folder is checked as ``loragate adapters publish`` checks it: servable by vLLM, trained on the
    served base model. A relative path is refused: relative to what would be a guess.
    """
    if not ADAPTER_NAME.fullmatch(name):
        raise InvalidRequestError(
            f"Invalid adapter name {name!r}: lower-case letters, digits, '.', '_' and '-'.", param="name"
        )
    if level not in ("L2", "L3"):
        raise InvalidRequestError(f"Invalid level {level!r}: L2 or L3.", param="level")
    if not folder.is_absolute():
        raise InvalidRequestError(f"The path {str(folder)!r} must be absolute.", param="path")
    if not folder.is_dir():
        raise InvalidRequestError(f"There is no folder {str(folder)!r} on the gateway's host.", param="path")
    try:
        with _registry_reachable():
            adapter = registry.publish(folder, name=name, level=level)
    except AdapterRejected as exc:
        raise InvalidRequestError(exc.message, param="path", code="adapter_rejected") from None
    except Exception as exc:  # the folder's files are the input: unreadable JSON, a broken safetensors
        raise InvalidRequestError(
            f"The adapter in {str(folder)!r} cannot be read: {type(exc).__name__}: {exc}",
            param="path",
            code="adapter_rejected",
        ) from None
    return Done(adapter, Change("adapters.publish", adapter.ref, None, adapter_view(adapter)))


def promote_adapter(registry: Registry, alias: str, ref: str) -> Done[str]:
    """Point ``alias`` at ``name@version`` (checked first: a broken version is never promoted)."""
    name, _, version = ref.partition("@")
    if not version.isdigit() or not name:
        raise InvalidRequestError(f"{ref!r} is not of the form name@version.", param="ref")
    with _registry_reachable():
        if not any(a.manifest.version == int(version) for a in registry.versions(name)):
            raise NotFoundError(
                f"There is no adapter {ref} in the registry.", param="ref", code="adapter_not_found"
            )
        before = _alias_state(registry, alias)
    try:
        with _registry_reachable():
            served = registry.promote(alias, ref)
    except AdapterRejected as exc:
        raise InvalidRequestError(exc.message, param="ref", code="adapter_rejected") from None
    return Done(served, Change("adapters.promote", alias, before, _alias_state(registry, alias)))


def rollback_adapter(registry: Registry, alias: str) -> Done[str]:
    """Point ``alias`` back at its previous target."""
    with _registry_reachable():
        before = _alias_state(registry, alias)
    if before is None:
        raise NotFoundError(f"There is no adapter alias {alias!r}.", param="alias", code="alias_not_found")
    try:
        with _registry_reachable():
            served = registry.rollback(alias)
    except AdapterRejected as exc:
        raise InvalidRequestError(exc.message, param="alias", code="no_earlier_version") from None
    return Done(served, Change("adapters.rollback", alias, before, _alias_state(registry, alias)))


def _alias_state(registry: Registry, alias: str) -> dict[str, Any] | None:
    current = registry.aliases().get(alias)
    return None if current is None else {"current": current, "history": registry.history(alias)}


# -- limits -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LimitScope:
    """A scope the admin asked about; ``limits`` None: it has none, and no counters."""

    kind: ScopeKind
    name: str  # "key_ab12cd34", "acme/it", "acme"
    tenant: str
    limits: Limits | None

    @property
    def scope(self) -> Scope | None:
        return None if self.limits is None else Scope(self.kind, self.name, self.tenant, self.limits)


def limit_scopes(
    directory: TenantDirectory,
    keys: KeyDirectory,
    *,
    tenant: str | None = None,
    department: str | None = None,
    key: str | None = None,
) -> list[LimitScope]:
    """The scopes whose counters to show: a key's; a tenant's and its departments' (or the one named);
    with nothing named, every tenant and department that has limits."""
    scopes: list[LimitScope] = []
    if key is not None:
        if key == BOOTSTRAP_KEY_ID:
            scopes.append(LimitScope("key", key, DEFAULT_TENANT, None))
        else:
            try:
                record = find_key(keys, key)
            except NotFoundError as exc:
                raise NotFoundError(exc.message, param="key", code=exc.code) from None
            scopes.append(LimitScope("key", key, record.tenant, record.limits))
    if department is not None and tenant is None:
        raise InvalidRequestError("Name the department's tenant too.", param="tenant")
    if tenant is not None:
        found = directory.get(tenant) or (builtin_tenant() if tenant == DEFAULT_TENANT else None)
        if found is None:
            raise NotFoundError(f"There is no tenant {tenant!r}.", param="tenant", code="tenant_not_found")
        if department is not None and department not in found.departments:
            raise NotFoundError(
                f"Tenant {tenant!r} has no department {department!r}.",
                param="department",
                code="department_not_found",
            )
        scopes += _tenant_scopes(found, department)
    elif key is None:
        everything = [s for t in directory.all() for s in _tenant_scopes(t, None)]
        scopes += [s for s in everything if s.limits is not None]
    return scopes


def _tenant_scopes(tenant: Tenant, department: str | None) -> list[LimitScope]:
    scopes = [LimitScope("tenant", tenant.name, tenant.name, tenant.limits)]
    for d in sorted(tenant.departments.values(), key=lambda d: d.name):
        if department is None or d.name == department:
            scopes.append(LimitScope("department", f"{tenant.name}/{d.name}", tenant.name, d.limits))
    return scopes
