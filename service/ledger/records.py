"""What the ledger holds (one usage record per request, audit entries) and the questions it answers.

Times are timezone-aware and kept in UTC; a naive ``datetime`` is refused rather than guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeAlias

Route: TypeAlias = Literal["chat", "completions", "embeddings"]
Grouping: TypeAlias = Literal["department", "adapter", "key", "tenant"]
JSON: TypeAlias = Any  # what json.dumps accepts: dict, list, str, int, float, bool or None

# The columns a report groups by: a department is only unique within its tenant, and so is a key's
# owner worth showing beside the key.
GROUP_COLUMNS: dict[Grouping, tuple[str, ...]] = {
    "department": ("tenant", "department"),
    "adapter": ("adapter",),
    "key": ("tenant", "key_id"),
    "tenant": ("tenant",),
}


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is an error, not a guess."""
    if moment.tzinfo is UTC:
        return moment
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"a naive datetime ({moment.isoformat()}): the ledger needs a timezone")
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    """One request, as the gateway answered it.

    ``time`` is when the request arrived. ``adapter`` and ``template`` are ``name@version``, or
    ``"base"`` and ``"none"``. ``ttft_ms`` is the time to the first token of a streamed answer
    (``None`` otherwise). A request that failed has its HTTP ``status`` and an ``error_type``
    (for an error in the middle of a stream, the status stays 200).

    ``prompt_text`` and ``completion_text`` are kept only for tenants that opted in, and then
    ``retention_days`` is required: ``purge_expired`` clears the text once it has passed (the
    counts stay). The ledger stores what it is given; whether to give the text is the gateway's
    decision.
    """

    time: datetime
    request_id: str
    tenant: str
    department: str | None
    key_id: str | None
    route: Route
    model: str
    adapter: str = "base"
    template: str = "none"
    engine: str = "local"
    replica: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    status: int = 200
    error_type: str | None = None
    prompt_text: str | None = None
    completion_text: str | None = None
    retention_days: int | None = None

    def __post_init__(self) -> None:
        # checked here, so that a database never refuses a record and with it the rest of its batch
        object.__setattr__(self, "time", utc(self.time))
        if not (0 <= self.prompt_tokens < 2**31 and 0 <= self.completion_tokens < 2**31):
            raise ValueError(f"token counts out of range: {self.prompt_tokens}, {self.completion_tokens}")
        if not 0 <= self.status < 1000:
            raise ValueError(f"not an HTTP status: {self.status}")
        for name in ("latency_ms", "ttft_ms"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value}")
        has_text = self.prompt_text is not None or self.completion_text is not None
        if has_text and self.retention_days is None:
            raise ValueError("a usage record with prompt or completion text needs retention_days")
        if self.retention_days is not None and self.retention_days < 0:
            raise ValueError(f"retention_days must be >= 0, not {self.retention_days}")

    @property
    def text_expires(self) -> datetime | None:
        """When the text must be gone; ``None`` when there is no text."""
        if self.retention_days is None or (self.prompt_text is None and self.completion_text is None):
            return None
        return self.time + timedelta(days=self.retention_days)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One admin action: who (the admin key's id) did what to which object, and its state around it."""

    time: datetime
    actor: str
    action: str  # e.g. "keys.create", "adapters.promote"
    target: str  # e.g. a key id, "acme-it"
    before: JSON = None
    after: JSON = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", utc(self.time))


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportQuery:
    """Usage from ``since`` (inclusive) to ``until`` (exclusive; ``None``: up to now), grouped ``by``."""

    by: Grouping
    since: datetime
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.by not in GROUP_COLUMNS:
            raise ValueError(f"unknown grouping {self.by!r}: one of {', '.join(GROUP_COLUMNS)}")
        object.__setattr__(self, "since", utc(self.since))
        if self.until is not None:
            object.__setattr__(self, "until", utc(self.until))

    @property
    def columns(self) -> tuple[str, ...]:
        return GROUP_COLUMNS[self.by]


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One group of a usage report. ``group`` holds the values of ``GROUP_COLUMNS[by]``, in order.

    ``errors`` counts answers with an HTTP error status or an error in the stream.
    ``p50_latency_ms`` is the exact median (the mean of the two middle values for an even count).
    """

    group: tuple[str | None, ...]
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    p50_latency_ms: float
    avg_latency_ms: float

    def as_dict(self, by: Grouping) -> dict[str, Any]:
        keys = dict(zip(GROUP_COLUMNS[by], self.group, strict=True))
        return keys | {
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "p50_latency_ms": round(self.p50_latency_ms, 3),
            "avg_latency_ms": round(self.avg_latency_ms, 3),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditQuery:
    """Audit entries in ``[since, until)``, optionally of one actor and/or one action, oldest first."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None
    limit: int = 1000

    def __post_init__(self) -> None:
        if self.since is not None:
            object.__setattr__(self, "since", utc(self.since))
        if self.until is not None:
            object.__setattr__(self, "until", utc(self.until))
        if self.limit < 1:
            raise ValueError(f"limit must be >= 1, not {self.limit}")
