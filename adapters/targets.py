"""The factory's targets, checked against a finished evaluation: what `make adapters` ends with.

An adapter is worth serving when the combination the gateway serves (L1 template + L2 adapter)
keeps the format and gets the decisions right on requests it never saw, does clearly better than
the template alone, forgets nothing the base knew, and when its L3 is preferred by judges that
did not learn DPO's rule. Each line says the figure, its interval and whether the target is met;
the demo figures and what would move them are in docs/adapters.md#results.
"""

from __future__ import annotations

from typing import Any

FORMAT = 0.95  # L1+L2 format compliance, point estimate
FIELDS = 0.90  # L1+L2 exact accuracy of each field, point estimate
WIN_LOW = 0.60  # lower bound of L3's win rate over L2

SERVED, TEMPLATE_ONLY = "l1+sft", "l1"


def _pct(r: dict[str, Any]) -> str:
    return f"{100 * r['rate']:.0f}% ({100 * r['low']:.0f}-{100 * r['high']:.0f})"


def _mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _name(step: str) -> str:
    return "L2" if step == "sft" else f"L3 ({step})"


def _clearly_above(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """a's interval lies wholly above b's."""
    return bool(a and b and a["low"] > b["high"])


def target_lines(report: dict[str, Any]) -> list[str]:
    variants = report["variants"]
    served, l1 = variants.get(SERVED), variants.get(TEMPLATE_ONLY)
    lines = ["targets:"]
    if served is None:
        lines.append("  no L1 template: the served rows (L1, L1+L2) were not evaluated")
    else:
        for set_name, scores in served["sets"].items():
            fmt = scores.get("format")
            if fmt:
                lines.append(
                    f"  {set_name}: L1+L2 format >= {FORMAT:.0%}: {_pct(fmt)} {_mark(fmt['rate'] >= FORMAT)}"
                )
            fields = {k: v for k, v in scores.get("fields", {}).items() if k != "all"}
            if fields:
                shown = ", ".join(f"{k} {_pct(v)} {_mark(v['rate'] >= FIELDS)}" for k, v in fields.items())
                lines.append(f"  {set_name}: L1+L2 fields >= {FIELDS:.0%}: {shown}")
            base = (l1 or {}).get("sets", {}).get(set_name, {})
            theirs = {"format": base.get("format"), "all": base.get("fields", {}).get("all")}
            apart = [
                f"{metric} {_mark(_clearly_above(mine, theirs[metric]))}"
                for metric, mine in (("format", fmt), ("all", scores.get("fields", {}).get("all")))
                if mine
            ]
            lines.append(f"  {set_name}: L1+L2 clearly above L1 (intervals apart): {', '.join(apart)}")
    for name, f in report.get("forgetting", {}).items():
        if f.get("gate"):
            g = f["gate"]
            diff = f"{100 * g['diff']:+.1f}"
            lines.append(
                f"  forgetting, {_name(name)} within 5 points of the base: {diff} {_mark(g['passed'])}"
            )
    for comparison, by_judge in report.get("win_rates", {}).items():
        if comparison.startswith("sft_"):
            continue
        shown = ", ".join(f"{judge} {_pct(w)} {_mark(w['low'] >= WIN_LOW)}" for judge, w in by_judge.items())
        mine, other = comparison.split("_vs_")
        lines.append(f"  {_name(mine)} over {_name(other)}, lower bound >= {WIN_LOW:.0%}: {shown}")
    return lines
