"""A generating request's accounting: admission under the limits, and its usage-ledger record.

Written once for every generating route (chat, completions, embeddings):

- ``admit``: a handler calls it as soon as the route is known (tenant, department, key). The
  limiter reserves the request's estimated tokens (the prompt's characters / 4, plus
  ``max_tokens`` x ``n``) in every scope it belongs to, or refuses it with 429 (503 when its
  backend is away and ``limits_failure_mode`` is ``closed``). The answer carries OpenAI's
  ``x-ratelimit-*`` headers.
- ``MetricsMiddleware`` (service/middleware.py) ends the request: before the answer's last bytes
  it awaits the ledger's commit of the request's record, so that every answer a client received
  completely is in the ledger even after a kill -9 (only answers in flight can be lost); after
  them it settles the reservation with the tokens actually used.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .errors import RateLimitError
from .ledger import LedgerError, UsageRecord
from .ledger.records import Route as LedgerRoute
from .limits import Ticket, request_scopes
from .tenancy import Principal, Route, Tenant

if TYPE_CHECKING:
    from .api.pipeline import Call
    from .metrics import RequestMetrics
    from .planning import Plan
    from .state import AppState

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # the estimate reserved at admission; the settlement charges what was used
LEDGER_WAIT = 5.0  # seconds an answer waits for its record's commit before it goes out regardless


@dataclass(slots=True)
class Facts:
    """What the ledger needs beyond the metrics' labels, filled in as the request goes."""

    route: LedgerRoute
    arrived: datetime
    key_id: str | None = None
    model: str = ""
    template: str = "none"
    adapter: str = "base"
    replica: str | None = None  # the remote replica that served (vLLM's host:port); None: the embedded engine
    ticket: Ticket | None = None
    # Only for a tenant that opted in (tenants file: record_text); the ledger clears it after retention_days.
    retention_days: int | None = None
    prompt_text: str | None = None
    completion_parts: list[str] | None = None  # the answer's text, as the deltas bring it


def estimate(prompt_chars: int, max_tokens: int, n: int) -> int:
    return prompt_chars // CHARS_PER_TOKEN + 1 + max_tokens * n


async def admit(call: Call, route: Route, tokens: int) -> dict[str, str]:
    """Reserve ``tokens`` under the limits of the request's key, department and tenant; its headers."""
    principal: Principal = call.principal
    scopes = request_scopes(
        route.tenant.name,
        route.tenant.limits,
        route.department.name,
        route.department.limits,
        principal.key_id,
        principal.limits,
    )
    try:
        ticket = await call.state.limiter.admit(scopes, tokens)
    except RateLimitError:
        call.state.metrics.rate_limited(route.tenant.name)
        raise
    if call.metrics is not None and call.metrics.facts is not None:
        call.metrics.facts.ticket = ticket
    return dict(ticket.headers())


def served(recorder: RequestMetrics, plan: Plan, prompt: object = None) -> None:
    """Which adapter and template versions served: the plan's, as its response headers say; and,
    for a tenant that opted in to keeping text, the prompt (``prompt``, else the plan's messages)."""
    facts = recorder.facts
    if facts is None:
        return
    facts.adapter = plan.adapter.ref if plan.adapter else "base"
    facts.template = plan.template.ref if plan.template else "none"
    if plan.route.tenant.record_text_days is not None:
        if prompt is None:
            prompt = [{"role": m.role, "content": m.content} for m in plan.request.messages]
        keep_text(recorder, plan.route.tenant, prompt)


def keep_text(recorder: RequestMetrics, tenant: Tenant, prompt: object) -> None:
    """For a tenant that opted in (``record_text``): the ledger keeps the prompt and the answer's text."""
    facts = recorder.facts
    if facts is None or tenant.record_text_days is None:
        return
    facts.retention_days, facts.completion_parts = tenant.record_text_days, []
    facts.prompt_text = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def new_facts(route: LedgerRoute) -> Facts:
    return Facts(route=route, arrived=datetime.now(UTC))


async def record(
    state: AppState, recorder: RequestMetrics, request_id: str, status: int, error: str | None
) -> None:
    """The request's ledger record, committed before its answer ends (see the module's docstring)."""
    entry = usage_record(state, recorder, request_id, status, error)
    if entry is None:
        return
    try:
        await _wait(state, entry)
    except (LedgerError, TimeoutError) as exc:
        log.warning("usage ledger: request %s not committed before its answer (%s)", request_id, exc)


async def _wait(state: AppState, entry: UsageRecord) -> None:
    committed = state.ledger.record(entry)
    # a timer that fails the future, not asyncio.timeout: on every request, and a third of the CPU
    give_up = asyncio.get_running_loop().call_later(LEDGER_WAIT, _give_up, committed)
    try:
        await committed
    finally:
        give_up.cancel()


def _give_up(committed: asyncio.Future[None]) -> None:
    if not committed.done():  # the ledger's writer skips a future that is done
        committed.set_exception(TimeoutError(f"not committed within {LEDGER_WAIT:g} s"))


def record_nowait(
    state: AppState, recorder: RequestMetrics, request_id: str, status: int, error: str | None
) -> None:
    """For an answer that never ended (the client left, a failure): recorded without waiting."""
    entry = usage_record(state, recorder, request_id, status, error)
    if entry is not None:
        try:
            state.ledger.record_nowait(entry)
        except LedgerError as exc:
            log.warning("usage ledger: request %s not recorded (%s)", request_id, exc)


def usage_record(
    state: AppState, recorder: RequestMetrics, request_id: str, status: int, error: str | None
) -> UsageRecord | None:
    """None before authentication: a request with no tenant is in the access log, not the ledger."""
    facts = recorder.facts
    tenant, department, _ = recorder.labels
    if facts is None or facts.key_id is None:
        return None
    ttft = recorder.ttft_seconds
    return UsageRecord(
        time=facts.arrived,
        request_id=request_id,
        tenant=tenant,
        department=department if department != "unknown" else None,
        key_id=facts.key_id,
        route=facts.route,
        model=facts.model[:256],
        adapter=facts.adapter,
        template=facts.template,
        engine=state.engine_kind,
        replica=facts.replica,
        prompt_tokens=recorder.prompt_tokens,
        completion_tokens=recorder.completion_tokens,
        latency_ms=recorder.seconds * 1000,
        ttft_ms=None if ttft is None else ttft * 1000,
        status=status,
        error_type=error,
        prompt_text=facts.prompt_text,
        completion_text=None if facts.completion_parts is None else "".join(facts.completion_parts),
        retention_days=facts.retention_days,
    )


async def settle(recorder: RequestMetrics) -> None:
    """Charge the tokens used instead of the reservation, and free the concurrency slots."""
    facts = recorder.facts
    if facts is not None and facts.ticket is not None:
        ticket, facts.ticket = facts.ticket, None
        await ticket.settle(recorder.prompt_tokens + recorder.completion_tokens)
