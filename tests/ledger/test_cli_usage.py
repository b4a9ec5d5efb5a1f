"""``loragate usage report``: table, csv and json from a real ledger."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest

from service import cli
from service.ledger import open_store
from tests.ledger.conftest import rec


@pytest.fixture
def filled(ledger_url: str) -> str:
    store = open_store(ledger_url)
    store.write(
        [
            rec("a1", latency_ms=10.0),
            rec("a2", latency_ms=30.0, status=500, error_type="engine_error"),
            rec("b1", department="it", adapter="acme-it@1", latency_ms=7.0, prompt_tokens=1000),
            rec("c1", tenant="globex", department=None, key_id=None, adapter="base"),
            rec("old", time=datetime(2026, 11, 30, 23, 59, tzinfo=UTC)),
        ],
        [],
    )
    store.close()
    return ledger_url


def report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["usage", "report", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_is_the_report(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = report(capsys, "--since", "2026-12-01", "--by", "department", "--format", "json",
                          "--ledger-url", filled)  # fmt: skip
    assert code == 0
    document = json.loads(out)
    assert document["by"] == "department" and document["since"] == "2026-12-01T00:00:00+00:00"
    assert document["until"] is None
    assert document["rows"] == [
        {"tenant": "acme", "department": "it", "requests": 1, "errors": 0, "prompt_tokens": 1000,
         "completion_tokens": 20, "total_tokens": 1020, "p50_latency_ms": 7.0, "avg_latency_ms": 7.0},
        {"tenant": "acme", "department": "legal", "requests": 2, "errors": 1, "prompt_tokens": 20,
         "completion_tokens": 40, "total_tokens": 60, "p50_latency_ms": 20.0, "avg_latency_ms": 20.0},
        {"tenant": "globex", "department": None, "requests": 1, "errors": 0, "prompt_tokens": 10,
         "completion_tokens": 20, "total_tokens": 30, "p50_latency_ms": 100.0, "avg_latency_ms": 100.0},
    ]  # fmt: skip


def test_csv_has_a_header_and_a_row_per_group(
    filled: str, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    code, out, _ = report(capsys, "--since", "2026-11-01", "--until", "2026-12-01", "--by", "adapter",
                          "--format", "csv", "--ledger-url", filled)  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["adapter"], r["requests"], r["total_tokens"]) for r in rows] == [("acme-legal@2", "1", "30")]


def test_table_is_readable_with_totals(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = report(capsys, "--since", "2026-12-01", "--by", "key", "--ledger-url", filled)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("Usage by key, 2026-12-01T00:00:00+00:00 to now")
    assert lines[1].split() == [
        "TENANT", "KEY_ID", "REQUESTS", "ERRORS", "PROMPT_TOKENS", "COMPLETION_TOKENS", "TOTAL_TOKENS",
        "P50_LATENCY_MS", "AVG_LATENCY_MS",
    ]  # fmt: skip
    assert lines[2].split()[:4] == ["acme", "k-legal", "3", "1"]
    assert lines[3].split()[:3] == ["globex", "-", "1"]
    assert set(lines[4]) == {"-"}
    assert lines[5].split()[:6] == ["TOTAL", "-", "4", "1", "1,030", "80"]


def test_the_default_ledger_url_comes_from_the_settings(
    filled: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAGATE_LEDGER_URL", filled)
    code, out, _ = report(capsys, "--since", "2026-12-01", "--by", "tenant", "--format", "csv")
    assert code == 0 and out.splitlines()[1].startswith("acme,3,1,1020,60,1080,")


def test_clear_failures(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    missing = f"sqlite:///{tmp_path}/nothing-here.db"
    code, _, err = report(capsys, "--since", "2026-12-01", "--by", "tenant", "--ledger-url", missing)
    assert code == 1 and "no usage ledger at" in err
    code, _, err = report(capsys, "--since", "December", "--by", "tenant", "--ledger-url", missing)
    assert code == 2 and "not a date" in err
    with pytest.raises(SystemExit):
        cli.main(["usage", "report", "--since", "2026-12-01", "--by", "model"])
