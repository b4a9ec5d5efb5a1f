"""What is limited, and for whom: the five limits of a scope, and the scopes of one request.

A scope is a key, a department or a tenant. Each may declare any of::

    requests_per_minute   token bucket: holds the limit, refills it over a minute
    tokens_per_minute     the same, in tokens (prompt + completion; reserved at admission, settled at the end)
    concurrent_requests   requests in flight at once
    tokens_per_day        budget: tokens per UTC calendar day
    tokens_per_month      budget: tokens per UTC calendar month

An absent limit is no limit. A request must fit every scope it belongs to: its key's, its department's
and its tenant's. The tenants file declares a ``limits:`` block on a tenant and on a department; a key
carries its own, set when it is created and stored with it in the keys file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

ScopeKind = Literal["key", "department", "tenant"]

_MAX = 10**15  # far above any real limit; keeps the Lua scripts' doubles exact


class LimitsSpec(BaseModel):
    """A ``limits:`` block, in the tenants file or a key's record; every field is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(None, ge=1, le=_MAX, description="requests per minute")
    tokens_per_minute: int | None = Field(
        None, ge=1, le=_MAX, description="prompt + completion tokens per minute (max_tokens reserved)"
    )
    concurrent_requests: int | None = Field(None, ge=1, le=_MAX, description="requests in flight at once")
    tokens_per_day: int | None = Field(None, ge=1, le=_MAX, description="budget per UTC calendar day")
    tokens_per_month: int | None = Field(None, ge=1, le=_MAX, description="budget per UTC calendar month")

    def to_limits(self) -> Limits | None:
        """The limits, or None when the block declares none."""
        limits = Limits(**self.model_dump())
        return limits if limits else None


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one scope; None = unlimited. False when it limits nothing."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None

    def __bool__(self) -> bool:  # on the hot path (request_scopes): no dataclasses.fields()
        return not (
            self.requests_per_minute is None
            and self.tokens_per_minute is None
            and self.concurrent_requests is None
            and self.tokens_per_day is None
            and self.tokens_per_month is None
        )

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> Limits | None:
        """A ``limits`` mapping (tenants file, keys file, CLI) -> Limits, or None when empty.

        Raises ``pydantic.ValidationError`` (a ValueError) on an unknown name or a value below 1.
        """
        if data is None:
            return None
        return LimitsSpec.model_validate(data).to_limits()

    def to_dict(self) -> dict[str, int]:
        """The declared limits only, as the keys file stores them."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}


class Scope(NamedTuple):
    """An owner of counters: ``key`` (``key_ab12cd34``), ``department`` (``acme/it``), ``tenant`` (``acme``).

    ``tenant`` is the tenant the scope belongs to: in Redis all of a tenant's counters share one hash tag,
    so one request's counters live in one Redis Cluster slot and one script can update them atomically.
    A NamedTuple: built for every request, and a frozen dataclass costs several times more to build.
    """

    kind: ScopeKind
    name: str
    tenant: str
    limits: Limits

    @property
    def id(self) -> str:
        return f"{self.kind[0]}:{self.name}"

    def describe(self) -> str:
        """How an error names the scope to its own tenant."""
        if self.kind == "key":
            return f"API key {self.name}"
        if self.kind == "department":
            return f"department {self.name.partition('/')[2]}"
        return f"tenant {self.name}"


def request_scopes(
    tenant: str,
    tenant_limits: Limits | None,
    department: str,
    department_limits: Limits | None,
    key_id: str,
    key_limits: Limits | None,
) -> tuple[Scope, ...]:
    """The scopes a request must fit, narrowest first; scopes without limits are left out.

    An empty tuple means unlimited: ``Limiter.admit`` then returns at once, with no counter touched.
    """
    scopes: list[Scope] = []
    if key_limits:
        scopes.append(Scope("key", key_id, tenant, key_limits))
    if department_limits:
        scopes.append(Scope("department", f"{tenant}/{department}", tenant, department_limits))
    if tenant_limits:
        scopes.append(Scope("tenant", tenant, tenant, tenant_limits))
    return tuple(scopes)
