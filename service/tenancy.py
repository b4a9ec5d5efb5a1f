"""Tenants and departments: who is calling, and which department and adapter serve the request.

The tenants file (YAML, ``LORAGATE_TENANTS_FILE``; see ``prompts/tenants.example.yaml``) declares
each tenant's departments (an adapter alias or none, an L1 template or none, template variables),
the extra adapter aliases the tenant may use, its default department and its caps. It is re-read
when it changes; a broken version is refused with a logged error and the previous one keeps serving.

Selection rule (``Tenancy.route``)
----------------------------------
1. Department: the department header (``X-Department``, ``LORAGATE_DEPARTMENT_HEADER``) when sent;
   else the department the API key is pinned to; else the tenant's ``default_department``.
   A key pinned to one department that names another in the header gets 403 ``permission_denied``.
2. A department this tenant does not have gets 403 ``permission_denied`` when another tenant has it,
   404 when no tenant has it. The 403 reads the same whichever tenant has it, and never names it.
3. ``model`` names the base model: the department's adapter serves (the base model if it has none).
   ``model`` names an adapter alias the tenant may use: that adapter serves; the explicit model wins
   over the department's adapter, and the department still chooses the L1 template. An alias only
   other tenants may use gets 403 (same no-leak wording); any other name gets 404 ``model_not_found``.
4. Caps: ``Tenant.max_tokens`` bounds a request's ``max_tokens``; the gateway applies it.

A key pinned to a department is pinned for its L1 template and default adapter; like any key of its
tenant, it may still name any of the tenant's adapters in ``model``.

With ``state_url`` the tenants document is kept in PostgreSQL instead of a file, versioned and shared
by several gateways (``service.shared_state``); everything below reads the same either way.

Without a tenants file the gateway is single-tenant: one tenant ``default`` with one department
``general`` (base model, no template, no caps). The bootstrap key (``LORAGATE_API_KEY``) always
authenticates as tenant ``default``: the file's when it defines one, else the built-in one.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import AuthenticationError, ModelNotFoundError, NotFoundError, PermissionDeniedError, quoted
from .keys import KeyDirectory, KeyRecord
from .limits.policy import Limits, LimitsSpec
from .reloading import FileWatch

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
DEFAULT_DEPARTMENT = "general"
BOOTSTRAP_KEY_ID = "bootstrap"
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
TEMPLATE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}(/[a-z0-9][a-z0-9._-]{0,63})*$"  # no "..", no leading "/"

MISSING_KEY = "You didn't provide an API key. Send it in the Authorization header as `Bearer YOUR_KEY`."
WRONG_KEY = "Incorrect API key provided."

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
TemplateName = Annotated[str, StringConstraints(pattern=TEMPLATE_PATTERN)]


# -- what the rest of the gateway sees ---------------------------------------------------------------
@dataclass(frozen=True)
class Department:
    name: str
    adapter: str | None  # registry alias; None = the base model, L1 only
    template: str | None  # template name, e.g. "acme/it"; None = no L1 template
    variables: Mapping[str, str]
    limits: Limits | None = None  # its rate limits and budgets (service/limits/); None: unlimited


@dataclass(frozen=True)
class Tenant:
    name: str
    departments: Mapping[str, Department]
    default_department: str
    adapters: frozenset[str]  # aliases the tenant may use (its departments' adapters always included)
    max_tokens: int | None  # cap on max_tokens per request
    variables: Mapping[str, str]
    limits: Limits | None = None  # limits for all its requests together; None: unlimited
    # The tenant opted in to keep prompts and completions in the usage ledger, for this many days
    # (the ledger clears the text once they pass); None: no text is ever recorded.
    record_text_days: int | None = None


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant: Tenant
    pinned_department: str | None
    limits: Limits | None = None  # the key's own limits; None: unlimited


@dataclass(frozen=True)
class Route:
    tenant: Tenant
    department: Department
    adapter: str | None  # alias to serve; None = the base model


def builtin_tenant() -> Tenant:
    """The single-tenant mode's tenant, and the bootstrap key's when the file has no ``default``."""
    general = Department(DEFAULT_DEPARTMENT, None, None, MappingProxyType({}))
    empty: Mapping[str, str] = MappingProxyType({})
    return Tenant(
        DEFAULT_TENANT, MappingProxyType({general.name: general}), general.name, frozenset(), None, empty
    )


# -- the file's schema -------------------------------------------------------------------------------
class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class DepartmentSpec(_Spec):
    adapter: Name | None = Field(None, description="registry alias of the adapter; none: the base model")
    template: TemplateName | None = Field(None, description="L1 template under prompts/, e.g. acme/it")
    variables: dict[str, str] = Field(default_factory=dict, description="values for the template")
    limits: LimitsSpec | None = Field(None, description="rate limits and budgets of the department")


class RecordTextSpec(_Spec):
    retention_days: int = Field(ge=1, le=3650, description="days the text is kept; then the ledger clears it")


class TenantSpec(_Spec):
    departments: dict[Name, DepartmentSpec] = Field(min_length=1)
    default_department: Name | None = Field(None, description="optional when there is one department")
    adapters: list[Name] = Field(default_factory=list, description="further aliases the tenant may use")
    max_tokens: int | None = Field(None, ge=1, description="cap on a request's max_tokens")
    variables: dict[str, str] = Field(default_factory=dict, description="values for all its templates")
    limits: LimitsSpec | None = Field(None, description="rate limits and budgets of the whole tenant")
    record_text: RecordTextSpec | None = Field(
        None, description="opt in: keep prompts and completions in the usage ledger for retention_days"
    )

    @field_validator("departments", mode="before")
    @classmethod
    def _bare_departments(cls, value: Any) -> Any:  # "it:" with nothing under it
        return {k: {} if v is None else v for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _default_is_a_department(self) -> TenantSpec:
        if self.default_department is None:
            if len(self.departments) > 1:
                raise ValueError("default_department is required when there is more than one department")
            self.default_department = next(iter(self.departments))
        elif self.default_department not in self.departments:
            raise ValueError(f"default_department {self.default_department!r} is not one of its departments")
        return self


class TenantsFile(_Spec):
    tenants: dict[Name, TenantSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _no_alias_is_the_base_model(self, info: ValidationInfo) -> TenantsFile:
        base = str((info.context or {}).get("base_model", "")).casefold()
        for name, tenant in self.tenants.items():
            aliases = [*tenant.adapters, *(d.adapter for d in tenant.departments.values() if d.adapter)]
            if base and any(alias.casefold() == base for alias in aliases):
                raise ValueError(f"tenant {name!r}: an adapter alias may not be the base model's name")
        return self


def _tenant(name: str, spec: TenantSpec) -> Tenant:
    departments = {
        d: Department(d, s.adapter, s.template, MappingProxyType(dict(s.variables)), _limits(s.limits))
        for d, s in spec.departments.items()
    }
    adapters = frozenset(spec.adapters) | {d.adapter for d in departments.values() if d.adapter}
    assert spec.default_department is not None  # filled in by the validator
    variables = MappingProxyType(dict(spec.variables))
    return Tenant(
        name,
        MappingProxyType(departments),
        spec.default_department,
        adapters,
        spec.max_tokens,
        variables,
        _limits(spec.limits),
        spec.record_text.retention_days if spec.record_text else None,
    )


def _limits(spec: LimitsSpec | None) -> Limits | None:
    return None if spec is None else spec.to_limits()


class TenantsFileError(ValueError):
    """A tenants file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TenantSnapshot:
    tenants: Mapping[str, Tenant]
    departments: frozenset[str]  # every department name of every tenant
    adapters: frozenset[str]  # every alias any tenant may use

    @classmethod
    def of(cls, tenants: Iterable[Tenant]) -> TenantSnapshot:
        by_name = {t.name: t for t in tenants}
        return cls(
            MappingProxyType(by_name),
            frozenset(d for t in by_name.values() for d in t.departments),
            frozenset(a for t in by_name.values() for a in t.adapters),
        )


class TenantDirectory:
    """The tenants file, re-read when it changes; a broken edit keeps the previous version serving.

    ``service.shared_state.SharedTenantDirectory`` is the same with the document kept in a database:
    it overrides ``_current``, ``source``, ``reload``, ``document``, ``replace`` and ``close``.
    """

    shared = False  # True: the shared database's, whose document the admin API may replace

    def __init__(self, path: Path | None, base_model: str):
        self.path = path
        self.base_model = base_model
        self._file: FileWatch[TenantSnapshot] | None = None
        self._builtin = TenantSnapshot.of([builtin_tenant()])  # single-tenant mode: no file to watch
        if path is not None:
            self._file = FileWatch(
                path, self._load, refused=TenantsFileError, log=log, on_loaded=self._loaded
            )

    def get(self, name: str) -> Tenant | None:
        return self._current().tenants.get(name)

    def all(self) -> list[Tenant]:
        return sorted(self._current().tenants.values(), key=lambda t: t.name)

    def has_department(self, name: str) -> bool:
        """Whether any tenant has a department of this name."""
        return name in self._current().departments

    def has_adapter(self, alias: str) -> bool:
        """Whether any tenant may use this adapter alias."""
        return alias in self._current().adapters

    def check_scope(self, tenant: str, department: str | None) -> None:
        """Raise NotFoundError unless ``tenant`` (and its ``department``) exist; for new API keys."""
        source = self.source
        found = self.get(tenant)
        if found is None:
            raise NotFoundError(f"{source}: there is no tenant {tenant!r}")
        if department is not None and department not in found.departments:
            raise NotFoundError(f"{source}: tenant {tenant!r} has no department {department!r}")

    @property
    def source(self) -> str:
        """Where the tenants come from, for messages."""
        return str(self.path) if self.path else "single-tenant mode (no tenants file)"

    @property
    def version(self) -> int | None:
        """The number of the document in force (the shared database numbers them); None for a file."""
        return None

    @property
    def configured(self) -> bool:
        """Whether there is a tenants document to reload or validate (not the built-in single tenant)."""
        return self.path is not None

    def document(self) -> str:
        """The tenants document's text as it is now (``TenantsFileError`` when it cannot be read)."""
        if self.path is None:
            raise TenantsFileError("single-tenant mode: there is no tenants file")
        try:
            return self.path.read_text()
        except OSError as exc:
            raise TenantsFileError(f"{self.path}: cannot read the tenants file ({exc.strerror})") from None

    def replace(self, text: str, actor: str) -> tuple[list[Tenant], list[Tenant]]:
        """Make ``text`` the tenants document: only the shared database's directory can (see there)."""
        raise TenantsFileError(
            "the tenants file is the operator's: edit it, then reload; the admin API replaces the"
            " tenants document only when they are kept in the shared database (state_url)"
        )

    def close(self) -> None:
        """Nothing to release: the file is read on demand."""

    def _current(self) -> TenantSnapshot:
        return self._builtin if self._file is None else self._file.current()

    def _loaded(self, snapshot: TenantSnapshot) -> None:
        log.info("tenants file %s reloaded (%d tenants)", self.path, len(snapshot.tenants))

    def reload(self) -> tuple[list[Tenant], list[Tenant]]:
        """Read the file now (the admin API's reload): the tenants in force before and after.

        A version that cannot be used raises ``TenantsFileError`` naming its problems, and the
        previous version stays in force, as when a request notices the edit.
        """
        if self._file is None:
            raise TenantsFileError("single-tenant mode: there is no tenants file to reload")
        before = self._file.last()
        self._load()  # a broken file raises here, for the caller; the watch below would only log it
        after = self._file.current()
        return _sorted(before), _sorted(after)

    def _load(self) -> TenantSnapshot:
        assert self.path is not None
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise TenantsFileError(f"{self.path}: cannot read the tenants file ({exc.strerror})") from None
        return TenantSnapshot.of(parse_tenants(text, self.base_model, self.path))


def _sorted(snapshot: TenantSnapshot) -> list[Tenant]:
    return sorted(snapshot.tenants.values(), key=lambda t: t.name)


def parse_tenants(text: str, base_model: str, source: object) -> list[Tenant]:
    """The tenants a tenants file's ``text`` declares; ``TenantsFileError`` names ``source`` and the problems.

    What the directory loads, and what the admin API validates without applying.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TenantsFileError(f"{source}: not valid YAML: {exc}") from None
    except Exception as exc:  # nested too deep for the parser, ...
        raise TenantsFileError(f"{source}: not valid YAML ({type(exc).__name__})") from None
    try:
        spec = TenantsFile.model_validate(data, context={"base_model": base_model})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise TenantsFileError(f"{source}: {problems}") from None
    return [_tenant(name, t) for name, t in spec.tenants.items()]


def _department_denied(name: str) -> PermissionDeniedError:
    return PermissionDeniedError(f"The department {quoted(name)} is not available to this API key.")


class Tenancy:
    """API key -> tenant; department header and ``model`` -> department and adapter (see the module doc)."""

    def __init__(
        self, tenants: TenantDirectory, keys: KeyDirectory, base_model: str, bootstrap_key: SecretStr | None
    ):
        self.tenants = tenants
        self.keys = keys
        self.base_model = base_model
        self._bootstrap = bootstrap_key

    def authenticate(self, authorization: str | None) -> Principal:
        """``Bearer <key>`` -> who is calling; keys are found by their hash, never logged.

        Never any I/O but a ``stat``: with the shared database, a key created on another gateway is
        known here once its change arrives (milliseconds; see ``service.shared_state``).
        ``authenticate_async`` also asks the database about a key not heard of yet.
        """
        token, bootstrap = self._token(authorization)
        if bootstrap is not None:
            return bootstrap
        return self._principal(self.keys.lookup(token))

    async def authenticate_async(self, authorization: str | None) -> Principal:
        """``authenticate``, for async callers: an unknown key is looked up in the shared database
        (in a worker thread) before it is refused, so a key created on another gateway works at once."""
        token, bootstrap = self._token(authorization)
        if bootstrap is not None:
            return bootstrap
        record = self.keys.lookup(token)
        return self._principal(record if record is not None else await self.keys.find(token))

    def close(self) -> None:
        self.keys.close()
        self.tenants.close()

    def _token(self, authorization: str | None) -> tuple[str, Principal | None]:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError(MISSING_KEY)
        bootstrap = self._bootstrap.get_secret_value() if self._bootstrap else None
        if bootstrap and hmac.compare_digest(token.encode(), bootstrap.encode()):
            tenant = self.tenants.get(DEFAULT_TENANT) or builtin_tenant()
            return token, Principal(BOOTSTRAP_KEY_ID, tenant, None)
        return token, None

    def _principal(self, record: KeyRecord | None) -> Principal:
        if record is None:
            raise AuthenticationError(WRONG_KEY)
        tenant = self.tenants.get(record.tenant)
        if tenant is None:
            raise AuthenticationError("This API key's tenant is no longer configured.")
        return Principal(record.key_id, tenant, record.department, record.limits)

    def route(self, principal: Principal, department_header: str | None, model: str) -> Route:
        tenant, pinned = principal.tenant, principal.pinned_department
        requested = (department_header or "").strip().lower() or None
        name = requested or pinned or tenant.default_department
        department = tenant.departments.get(name)
        if department is None:
            if self.tenants.has_department(name):
                raise _department_denied(name)
            raise NotFoundError(f"The department {quoted(name)} does not exist.", code="department_not_found")
        if requested is not None and pinned is not None and requested != pinned:
            raise _department_denied(name)
        if model == self.base_model:
            adapter = department.adapter
        elif model in tenant.adapters:
            adapter = model
        elif self.tenants.has_adapter(model):
            raise PermissionDeniedError(
                f"The model {quoted(model)} is not available to this API key.", param="model"
            )
        else:
            raise ModelNotFoundError(
                f"The model {quoted(model)} does not exist or you do not have access to it.", param="model"
            )
        return Route(tenant, department, adapter)

    def visible_models(self, principal: Principal) -> list[str]:
        """The base model first, then the adapter aliases the tenant may use, sorted."""
        return [self.base_model, *sorted(principal.tenant.adapters)]
