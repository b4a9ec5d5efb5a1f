"""The targets `make adapters` ends with: each figure with its interval, and met or MISSED."""

from __future__ import annotations

from typing import Any

from adapters.stats import rate
from adapters.targets import target_lines


def scores(format_k: int, risk_k: int, n: int = 50) -> dict[str, Any]:
    return {"n": n, "format": rate(format_k, n), "fields": {"risk": rate(risk_k, n), "all": rate(risk_k, n)}}


def report(served: dict[str, Any], l1: dict[str, Any], win_k: int, gate_passed: bool) -> dict[str, Any]:
    return {
        "variants": {
            "l1": {"sets": {"held_out": l1}},
            "l1+sft": {"sets": {"held_out": served}},
        },
        "forgetting": {"sft": {"gate": {"diff": -0.02, "low": -0.1, "high": 0.06, "passed": gate_passed}}},
        "win_rates": {
            "sft_vs_base": {"fields": rate(50, 50)},  # not a target line
            "dpo_vs_sft": {"fields": rate(win_k, 50), "reward": rate(50, 50)},
        },
    }


def test_every_target_met() -> None:
    lines = [line.strip() for line in target_lines(report(scores(50, 47), scores(10, 5), 45, True))]
    assert "MISSED" not in "\n".join(lines)
    assert "held_out: L1+L2 format >= 95%: 100% (93-100) met" in lines
    assert "held_out: L1+L2 fields >= 90%: risk 94% (84-98) met" in lines
    assert "held_out: L1+L2 clearly above L1 (intervals apart): format met, all met" in lines
    assert "forgetting, L2 within 5 points of the base: -2.0 met" in lines
    assert not any("base" in line and "over" in line for line in lines)
    assert any(
        line.startswith("L3 (dpo) over L2, lower bound >= 60%: fields 90% (79-96) met") for line in lines
    )


def test_a_missed_target_says_so_with_its_interval() -> None:
    lines = [line.strip() for line in target_lines(report(scores(40, 20), scores(35, 18), 30, False))]
    assert "held_out: L1+L2 format >= 95%: 80% (67-89) MISSED" in lines
    assert "held_out: L1+L2 fields >= 90%: risk 40% (28-54) MISSED" in lines
    assert "held_out: L1+L2 clearly above L1 (intervals apart): format MISSED, all MISSED" in lines
    assert "forgetting, L2 within 5 points of the base: -2.0 MISSED" in lines
    assert "fields 60% (46-72) MISSED, reward 100% (93-100) met" in lines[-1]


def test_without_a_template_the_served_rows_are_named_missing() -> None:
    lines = target_lines({"variants": {"sft": {"sets": {}}}, "win_rates": {}})
    assert lines == ["targets:", "  no L1 template: the served rows (L1, L1+L2) were not evaluated"]
