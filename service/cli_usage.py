"""``loragate usage ...``: the usage ledger from the command line.

    loragate usage report --since 2026-12-01 [--until 2027-01-01] --by department|adapter|key|tenant
                          [--format table|csv|json] [--ledger-url URL]

``--until`` is exclusive (a month is ``--since 2026-12-01 --until 2027-01-01``); without it the
report runs up to now. Dates are midnight UTC; a full ISO 8601 time may carry its own offset.
The report reads the database only; it runs beside a gateway that writes it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import Settings

GROUPINGS = ("department", "adapter", "key", "tenant")
FORMATS = ("table", "csv", "json")


def add_usage_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "usage",
        help="reports from the usage ledger",
        description="Reports from the usage ledger (one record per request).",
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    report = verbs.add_parser(
        "report",
        help="requests, errors, tokens and latency per department, adapter, key or tenant",
        description="Requests, errors, prompt and completion tokens, p50 and mean latency, per group.",
    )
    report.add_argument("--since", required=True, metavar="DATE", help="first day (UTC) or ISO 8601 time")
    report.add_argument("--until", metavar="DATE", help="end, exclusive (default: now)")
    report.add_argument("--by", required=True, choices=GROUPINGS, help="what each row is")
    report.add_argument("--format", choices=FORMATS, default="table", help="default: table")
    report.add_argument("--config", type=Path, help="YAML settings file (env LORAGATE_CONFIG)")
    field = Settings.model_fields["ledger_url"]
    report.add_argument(
        "--ledger-url",
        dest="ledger_url",
        metavar="URL",
        help=f"{field.description} (default: {field.default}; env LORAGATE_LEDGER_URL)",
    )
    return parser


def run_usage(args: argparse.Namespace, settings: Settings) -> int:
    from .ledger import LedgerError, ReportQuery, open_store, redacted, usage_report
    from .ledger.report import parse_moment, render
    from .ledger.sqlite import sqlite_path

    url = settings.resolved_ledger_url
    try:
        query = ReportQuery(
            by=args.by,
            since=parse_moment(args.since),
            until=parse_moment(args.until) if args.until else None,
        )
        if url.startswith("sqlite:") and not sqlite_path(url)[0].exists():
            print(f"loragate: no usage ledger at {sqlite_path(url)[0]} (ledger_url {url})", file=sys.stderr)
            return 1
        store = open_store(url)
        try:
            rows = usage_report(store, query)
        finally:
            store.close()
    except ValueError as exc:
        print(f"loragate: {exc}", file=sys.stderr)
        return 2
    except LedgerError as exc:
        print(f"loragate: the usage ledger at {redacted(url)}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render(rows, query, args.format))
    return 0
