"""Field parsers and the forgetting suite's exact scoring: no model needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.content_legal import CLAUSES
from adapters.fields import constant_answer, expected_from_reference, parse_legal, parse_ticket, score_fields
from adapters.forgetting import Probe, correct, gate, load_probes, suite_score
from adapters.report import set_table

TICKET = (
    "TICKET: vpn-dropping\nPRIORITY: high\nSTEPS:\n1. Restart the VPN client.\n"
    "2. Plug in a network cable.\nESCALATE: no"
)


def test_ticket_fields_are_read_and_compared_exactly() -> None:
    parsed = parse_ticket(TICKET)
    assert (
        parsed["category"] == "vpn-dropping" and parsed["priority"] == "high" and parsed["escalate"] == "no"
    )
    expected = {"category": "vpn-dropping", "priority": "medium", "escalate": False,
                "step_keywords": ["vpn", "cable|ethernet"]}  # fmt: skip
    assert score_fields("it-helpdesk", TICKET, expected) == {
        "category": True, "priority": False, "escalate": True, "steps": True, "all": False,
    }  # fmt: skip
    assert (
        score_fields("it-helpdesk", TICKET, {"step_keywords": ["reboot|restart", "wifi"]})["steps"] is False
    )
    prose = "Please restart your VPN client; it is high priority."
    assert score_fields("it-helpdesk", prose, expected) == {
        "category": False, "priority": False, "escalate": False, "steps": False, "all": False,
    }  # fmt: skip


def test_a_wrongly_ordered_ticket_still_scores_its_fields() -> None:
    shuffled = "PRIORITY: Low\nTICKET: printer-jam extra\nESCALATE: yes.\nSTEPS:\n1) Open tray 2."
    assert parse_ticket(shuffled) | {"steps": ""} == {
        "category": "printer-jam", "priority": "low", "escalate": "yes", "steps": "",
    }  # fmt: skip


def test_legal_fields_and_the_clause_type_of_every_reference_summary() -> None:
    answer = "SUMMARY: Our liability is capped at EUR 1,000.\nRISK: High - far too low"
    assert parse_legal(answer) == {"risk": "high", "clause_type": "limitation of liability"}
    assert parse_legal("CLAUSE: Warranty\nRISK: low - fine")["clause_type"] == "warranty"
    for clause in CLAUSES:  # the parser's ceiling: every reference summary gives its own clause type
        reference = f"SUMMARY: {clause.summary}\nRISK: {clause.risk} - {clause.reason}"
        assert expected_from_reference("legal", reference) == {
            "risk": clause.risk,
            "clause_type": clause.name,
        }
    assert score_fields("legal", "I cannot help.", {"risk": "low", "clause_type": "indemnity"}) == {
        "risk": False, "clause_type": False, "all": False,
    }  # fmt: skip
    assert score_fields(None, "x", {"risk": "low"}) == {}


@pytest.mark.parametrize(
    ("match", "accept", "answer", "ok"),
    [
        ("contains", ["Paris"], "The capital of France is Paris.", True),
        ("contains", ["4"], "2 + 2 = 42", False),  # on word boundaries
        ("exact", ["yes"], "Yes.", True),
        ("exact", ["yes"], "Yes, of course.", False),
        ("regex", [r"\b(blue)\b"], "The sky is BLUE", True),
        ("refusal", [], "I'm sorry, but the moon is not made of cheese.", True),
        ("refusal", [], "The king of the moon is Bob.", False),
        ("refusal", ["no such"], "There was no such person.", True),
    ],
)
def test_forgetting_probes_are_scored_exactly(match: str, accept: list[str], answer: str, ok: bool) -> None:
    assert correct(Probe("p", "q", "kind", tuple(accept), match), answer) is ok


def test_suite_score_gate_and_bad_rows(tmp_path: Path) -> None:
    rows = [{"id": str(i), "instruction": "2+2?", "kind": "arithmetic", "accept": ["4"], "match": "contains"}
            for i in range(20)]  # fmt: skip
    path = tmp_path / "forgetting.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    probes = load_probes(path)
    base = suite_score(probes, ["4"] * 20)
    worse = suite_score(probes, ["4"] * 18 + ["5"] * 2)
    assert base["overall"]["rate"] == 1.0 and worse["per_kind"]["arithmetic"]["k"] == 18
    result = gate(base, worse)
    assert result["diff"] == -0.1 and not result["passed"] and result["low"] < -0.1 < result["high"]
    assert gate(base, suite_score(probes, ["4"] * 19 + ["x"]))["passed"]  # -5 points: within the gate
    path.write_text(json.dumps({"instruction": "x", "match": "fuzzy", "accept": ["y"]}) + "\n")
    with pytest.raises(ValueError, match="forgetting.jsonl:1"):
        load_probes(path)


@pytest.mark.parametrize("department", ["it-helpdesk", "legal"])
def test_every_shipped_reference_answer_scores_all_its_expected_fields(department: str) -> None:
    """The parsers' ceiling: a perfect answer gets 100%, so a miss in the report is the model's."""
    folder = Path(__file__).resolve().parents[2] / "adapters" / "datasets" / department
    scored = 0
    for name in ("train.jsonl", "held_out.jsonl"):
        for line in (folder / name).read_text().splitlines():
            row = json.loads(line)
            if row.get("expected"):
                assert score_fields(department, row["response"], row["expected"])["all"], row
                scored += 1
    assert scored >= 250


def test_the_constant_answer_baseline_is_the_commonest_training_value() -> None:
    train = [{"risk": "low"}, {"risk": "low"}, {"risk": "high"}, None, {"risk": "medium", "clause_type": "x"}]
    rows = [{"risk": "low"}, {"risk": "high"}, {"risk": "low"}, {"risk": "medium"}, None]
    out = constant_answer("legal", train, rows)
    assert out["risk"]["value"] == "low" and (out["risk"]["k"], out["risk"]["n"]) == (2, 4)
    assert 0 < out["risk"]["low"] < 0.5 < out["risk"]["high"] < 1
    assert out.keys() == {"risk"}  # no row to score clause_type on
    assert constant_answer(None, train, rows) == {} and constant_answer("legal", [], rows) == {}
    report = {
        "variants": {"sft": {"sets": {"held_out": {"format": None, "fields": {"risk": out["risk"]}}}}},
        "constant_answer": {"held_out": out},
    }
    assert set_table(report, "held_out")[-1] == "| constant answer | - | 50% (15-85) `low` | - |"
