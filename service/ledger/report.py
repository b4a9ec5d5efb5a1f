"""Usage reports: the query (shared by ``loragate usage report`` and the admin API) and its three formats."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from .records import GROUP_COLUMNS, ReportQuery, ReportRow

if TYPE_CHECKING:
    from .store import LedgerStore

Format: TypeAlias = Literal["table", "csv", "json"]
NUMBERS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens")
LATENCIES = ("p50_latency_ms", "avg_latency_ms")


def usage_report(store: LedgerStore, query: ReportQuery) -> list[ReportRow]:
    """The report's rows, one per group, sorted by group. Reads only."""
    return store.usage_report(query)


def parse_moment(text: str) -> datetime:
    """``2026-12-01`` (midnight UTC) or an ISO 8601 time (UTC unless it names an offset)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date or an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def render(rows: list[ReportRow], query: ReportQuery, fmt: Format) -> str:
    records = [row.as_dict(query.by) for row in rows]
    if fmt == "json":
        document = {
            "by": query.by,
            "since": query.since.isoformat(),
            "until": query.until.isoformat() if query.until else None,
            "rows": records,
        }
        return json.dumps(document, indent=2) + "\n"
    columns = [*GROUP_COLUMNS[query.by], *NUMBERS, *LATENCIES]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue()
    return _table(records, columns, query)


def _table(records: list[dict[str, Any]], columns: list[str], query: ReportQuery) -> str:
    until = f"{query.until.isoformat()} (exclusive)" if query.until else "now"
    title = f"Usage by {query.by}, {query.since.isoformat()} to {until}\n"
    if not records:
        return title + "No requests in this period.\n"
    totals: dict[str, Any] = {name: sum(r[name] for r in records) for name in NUMBERS}
    totals[columns[0]] = "TOTAL"
    cells = [[name.upper() for name in columns]]
    cells += [[_cell(record.get(name)) for name in columns] for record in [*records, totals]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    numeric = {i for i, name in enumerate(columns) if name in NUMBERS or name in LATENCIES}

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    body = [line(row) for row in cells]
    body.insert(len(body) - 1, "-" * len(body[0]))  # above the totals
    return title + "\n".join(body) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
