"""``/admin/v1``: keys, tenants and templates, adapters, usage, the audit log and limit counters.

Plain FastAPI routes, not the ``/v1`` pipeline: admin calls are rare, so FastAPI's body and query
validation, its dependency injection (the admin key) and its OpenAPI description are worth
their cost here, and its exception handlers render every error in the OpenAI envelope.

Routes stay thin: parse, run the shared operation (``operations.py``, blocking file work, in a
worker thread), write the audit entry for a change before answering, return JSON. Lists are
``{"data": [...]}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..errors import EngineUnavailableError, InvalidRequestError
from ..ledger import AuditQuery, LedgerError, ReportQuery
from ..ledger.records import GROUP_COLUMNS, AuditEntry, Grouping
from ..ledger.report import parse_moment, render
from ..limits.policy import LimitsSpec
from ..prompts import TemplateStore
from ..state import AppState, StateDep
from ..tenancy import Name, TenantDirectory
from . import operations as ops
from .audit import AUDIT_HEADER, record
from .auth import ActorDep, admin_actor

R = TypeVar("R")
MAX_AUDIT_ENTRIES = 10_000

router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=[Depends(admin_actor)])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateKey(_Body):
    tenant: Name
    department: Name | None = Field(None, description="pin the key to this department of the tenant")
    limits: LimitsSpec | None = Field(None, description="the key's own rate limits and budgets")


class TenantsText(_Body):
    yaml: str | None = Field(None, description="a tenants file to check; none: the configured file")


class TenantsDocument(_Body):
    yaml: str = Field(description="the whole tenants document, as the tenants file is written")


class TemplateCheck(_Body):
    name: str = Field(description="the template, e.g. acme/it (prompts/acme/it.yaml)")
    tenant: Name | None = Field(None, description="render it for this tenant's department only")
    department: Name | None = None
    variables: dict[str, str] | None = Field(None, description="values added to the department's")


class Publish(_Body):
    path: str = Field(description="an absolute folder path on the gateway's host (a trained PEFT adapter)")
    name: Name
    level: Literal["L2", "L3"]


class Promote(_Body):
    alias: Name
    ref: str = Field(description="name@version")


class Rollback(_Body):
    alias: Name


async def _run(work: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """An operation in a worker thread: file locks, fsyncs and sha256 stay off the event loop."""
    return await asyncio.to_thread(work, *args, **kwargs)


async def _changed(
    state: AppState, actor: str, done: ops.Done[Any], body: Any, status: int = 200
) -> JSONResponse:
    """The audit entry committed (or queued, see ``audit.py``), then the answer."""
    written = await record(state.ledger, actor, done.change)
    return JSONResponse(body, status_code=status, headers={AUDIT_HEADER: "written" if written else "pending"})


# -- keys -------------------------------------------------------------------------------------------
@router.post("/keys", status_code=201)
async def create_key(body: CreateKey, state: StateDep, actor: ActorDep) -> JSONResponse:
    """A new tenant key: the secret is in this answer only."""
    limits = body.limits.to_limits() if body.limits else None
    done = await _run(ops.create_key, state.tenancy.keys, body.tenant, body.department, limits)
    return await _changed(state, actor, done, {"key": done.value.key, **ops.key_view(done.value.record)}, 201)


@router.get("/keys")
async def list_keys(state: StateDep) -> dict[str, Any]:
    """Every key's record, oldest first; never a key or its hash."""
    records = await _run(ops.list_keys, state.tenancy.keys)
    return {"data": [ops.key_view(r) for r in records]}


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, state: StateDep, actor: ActorDep) -> JSONResponse:
    """The key stops working on the next request."""
    done = await _run(ops.revoke_key, state.tenancy.keys, key_id)
    return await _changed(state, actor, done, ops.key_view(done.value))


# -- tenants and templates --------------------------------------------------------------------------
@router.post("/tenants/reload")
async def reload_tenants(state: StateDep, actor: ActorDep) -> JSONResponse:
    """Read the tenants file now; a broken one is a 400 and the previous version keeps serving."""
    done = await _run(ops.reload_tenants, _directory(state))
    return await _changed(state, actor, done, {"tenants": done.value})


@router.get("/tenants")
async def current_tenants(state: StateDep) -> dict[str, Any]:
    """The tenants in force: where they come from, the document's version and text."""
    return await _run(ops.current_tenants, _directory(state))


@router.put("/tenants")
async def replace_tenants(body: TenantsDocument, state: StateDep, actor: ActorDep) -> JSONResponse:
    """Store a new version of the shared tenants document (``state_url``), validated first; every
    gateway loads it within seconds. A document that cannot be used is a 400 and nothing changes."""
    done = await _run(
        ops.replace_tenants, _directory(state), state.registry, _templates(state), body.yaml, actor
    )
    return await _changed(state, actor, done, done.value)


@router.post("/tenants/validate")
async def validate_tenants(state: StateDep, body: TenantsText | None = None) -> dict[str, Any]:
    """Check a posted tenants file (``yaml``), or the configured one, without applying it."""
    text = body.yaml if body is not None else None
    return await _run(ops.validate_tenants, _directory(state), state.registry, _templates(state), text)


@router.post("/templates/validate")
async def validate_template(body: TemplateCheck, state: StateDep) -> dict[str, Any]:
    """Load a template from its file as it is now and render it as its departments' requests would."""
    return await _run(
        ops.validate_template,
        _templates(state),
        _directory(state),
        body.name,
        tenant=body.tenant,
        department=body.department,
        variables=body.variables,
    )


def _directory(state: AppState) -> TenantDirectory:
    return state.tenancy.tenants


def _templates(state: AppState) -> TemplateStore:
    """A store of its own, so a check reads the files as they are now and changes nothing that serves."""
    settings = state.settings
    return TemplateStore(
        settings.prompts_dir,
        render_timeout=settings.template_render_timeout,
        max_chars=settings.max_template_chars,
    )


# -- adapters ---------------------------------------------------------------------------------------
@router.get("/adapters")
async def list_adapters(state: StateDep) -> dict[str, Any]:
    """Every adapter version, and each alias with what it serves and its history."""
    return await _run(ops.list_adapters, state.registry)


@router.post("/adapters/publish", status_code=201)
async def publish_adapter(body: Publish, state: StateDep, actor: ActorDep) -> JSONResponse:
    """Register a trained adapter folder on the gateway's host as the next version of ``name``."""
    done = await _run(ops.publish_adapter, state.registry, Path(body.path), body.name, body.level)
    return await _changed(state, actor, done, ops.adapter_view(done.value), 201)


@router.post("/adapters/promote")
async def promote_adapter(body: Promote, state: StateDep, actor: ActorDep) -> JSONResponse:
    """Point an alias at ``name@version``: the next request of its departments gets it."""
    done = await _run(ops.promote_adapter, state.registry, body.alias, body.ref)
    return await _changed(state, actor, done, {"alias": body.alias, **done.change.after})


@router.post("/adapters/rollback")
async def rollback_adapter(body: Rollback, state: StateDep, actor: ActorDep) -> JSONResponse:
    """Point an alias back at its previous version."""
    done = await _run(ops.rollback_adapter, state.registry, body.alias)
    return await _changed(state, actor, done, {"alias": body.alias, **done.change.after})


# -- usage, audit, limits -----------------------------------------------------------------------------
@router.get("/usage", response_model=None)
async def usage(
    state: StateDep,
    since: str | None = None,
    until: str | None = None,
    by: str = "department",
    format: str = "json",
) -> dict[str, Any] | Response:
    """The usage report (``loragate usage report``), a row per group; ``since``: this UTC month."""
    if by not in GROUP_COLUMNS:
        raise InvalidRequestError(f"by must be one of {', '.join(GROUP_COLUMNS)}.", param="by")
    if format not in ("json", "csv"):
        raise InvalidRequestError("format must be json or csv.", param="format")
    start = _moment(since, "since") if since else _month_start()
    query = ReportQuery(by=_grouping(by), since=start, until=_moment(until, "until") if until else None)
    rows = await _read(state.ledger.usage_report, query)
    if format == "csv":
        return Response(render(rows, query, "csv"), media_type="text/csv")
    return {
        "by": query.by,
        "since": query.since.isoformat(),
        "until": query.until.isoformat() if query.until else None,
        "data": [row.as_dict(query.by) for row in rows],
    }


@router.get("/audit")
async def audit(
    state: StateDep,
    since: str | None = None,
    until: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    limit: int = 1000,
) -> dict[str, Any]:
    """Audit entries, oldest first, at most ``limit`` (1 to 10,000)."""
    if not 1 <= limit <= MAX_AUDIT_ENTRIES:
        raise InvalidRequestError(f"limit must be from 1 to {MAX_AUDIT_ENTRIES}.", param="limit")
    query = AuditQuery(
        since=_moment(since, "since") if since else None,
        until=_moment(until, "until") if until else None,
        actor=actor,
        action=action,
        limit=limit,
    )
    entries = await _read(state.ledger.audit_log, query)
    return {"data": [_entry_view(e) for e in entries]}


@router.get("/limits")
async def limits(
    state: StateDep, tenant: str | None = None, department: str | None = None, key: str | None = None
) -> dict[str, Any]:
    """The counters now: a key's, a tenant's and its departments' (or one), or every scope with limits."""
    scopes = await _run(
        ops.limit_scopes, _directory(state), state.tenancy.keys, tenant=tenant, department=department, key=key
    )
    data = []
    for found in scopes:
        scope = found.scope
        usage = None if scope is None else await state.limiter.usage(scope)
        data.append(
            {
                "scope": found.kind,
                "name": found.name,
                "tenant": found.tenant,
                "limits": found.limits.to_dict() if found.limits else None,
                "usage": None if usage is None else asdict(usage),
            }
        )
    return {"data": data}


def _entry_view(entry: AuditEntry) -> dict[str, Any]:
    return {
        "time": entry.time.isoformat(),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "before": entry.before,
        "after": entry.after,
    }


def _month_start() -> datetime:
    return datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _moment(text: str, param: str) -> datetime:
    try:
        return parse_moment(text)
    except ValueError as exc:
        raise InvalidRequestError(f"Invalid value for {param}: {exc}.", param=param) from None


def _grouping(by: str) -> Grouping:
    return by  # type: ignore[return-value]  # checked against GROUP_COLUMNS above


async def _read(read: Callable[[Any], list[R]], query: Any) -> list[R]:
    """A ledger read in a worker thread; 503 when the database cannot be read."""
    try:
        return await asyncio.to_thread(read, query)
    except LedgerError as exc:
        raise EngineUnavailableError(
            f"The usage ledger cannot be read right now: {exc}", code="ledger_unavailable"
        ) from None
