"""The evaluation report: report.json, report.md and report.png in the eval run folder.

Every rate is printed as `share (low-high)`, its 95% Wilson interval: with 40-90 prompts a
set, a few points either way are noise, and the gates read the bounds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .targets import target_lines

LABELS = {"base": "base", "l1": "L1", "sft": "L2", "l1+sft": "L1+L2 (served)"}
SET_TITLES = {"held_out": "unseen held-out", "independent": "independent held-out"}


def label(name: str) -> str:
    return LABELS.get(name, f"L3 ({name})")


def cell(r: dict[str, Any] | None) -> str:
    if not r or r.get("rate") is None:
        return "-"
    return f"{100 * r['rate']:.0f}% ({100 * r['low']:.0f}-{100 * r['high']:.0f})"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def set_table(report: dict[str, Any], set_name: str) -> list[str]:
    """One row per variant: format, each field, all fields, forgetting."""
    variants = report["variants"]
    fields: list[str] = []
    for v in variants.values():
        for name in v["sets"].get(set_name, {}).get("fields", {}):
            if name not in fields:
                fields.append(name)
    head = ["model", "format", *fields, "forgetting"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    forgetting = report.get("forgetting", {})
    for name, v in variants.items():
        s = v["sets"].get(set_name)
        if s is None:
            continue
        row = [label(name), cell(s.get("format"))] + [cell(s.get("fields", {}).get(f)) for f in fields]
        row.append(cell(forgetting.get(name, {}).get("overall")))
        lines.append("| " + " | ".join(row) + " |")
    constant = report.get("constant_answer", {}).get(set_name)
    if constant:  # the cheapest field baseline: one value for every request
        row = ["constant answer", "-"] + [
            f"{cell(constant[f])} `{constant[f]['value']}`" if f in constant else "-" for f in fields
        ]
        lines.append("| " + " | ".join([*row, "-"]) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation: {report['department']}", ""]
    lines.append(
        f"Greedy answers in float32; L1 template: {report.get('template') or 'none'}; "
        "cells are `share (95% Wilson interval)`; `all` = every field of the answer right."
    )
    for set_name, n in report.get("sets", {}).items():
        lines += [
            "",
            f"## {SET_TITLES.get(set_name, set_name)} ({n} requests)",
            "",
            *set_table(report, set_name),
        ]
    lines += ["", "## Forgetting (general suite) and the gate: at most 5 points below the base", ""]
    lines += ["| model | passed | vs base (95% interval) | gate |", "|---|---|---|---|"]
    for name, f in report.get("forgetting", {}).items():
        g = f.get("gate")
        diff = (
            "-" if g is None else f"{100 * g['diff']:+.1f} ({100 * g['low']:+.1f} to {100 * g['high']:+.1f})"
        )
        verdict = "-" if g is None else ("pass" if g["passed"] else "FAIL")
        lines.append(f"| {label(name)} | {cell(f['overall'])} | {diff} | {verdict} |")
    lines += ["", "## Off-domain probe (answered in the department's format, which it should not)", ""]
    for name, o in report.get("off_domain", {}).items():
        lines.append(f"- {label(name)}: {cell(o.get('in_department_format'))}")
        for sample in o["samples"][:2]:
            lines.append(f"  - {sample['prompt'][:60]!r} -> {sample['answer'][:100]!r}")
    lines += ["", f"## Win rates (both orders; ties count half); the gate's judge: {report['judge']}", ""]
    lines += ["| comparison | judge | win rate (95% interval) | W / T / L |", "|---|---|---|---|"]
    for comparison, by_judge in report["win_rates"].items():
        for judge, w in by_judge.items():
            lines.append(
                f"| {comparison.replace('_vs_', ' vs ')} | {judge} | {cell(w)} | "
                f"{w['wins']} / {w['ties']} / {w['losses']} |"
            )
    lines += ["", "## Agreement between judges (win / tie / loss labels)", ""]
    lines += ["| comparison | judges | agreement | Cohen's kappa |", "|---|---|---|---|"]
    for comparison, pairs in report.get("judge_agreement", {}).items():
        for p in pairs:
            kappa = "-" if p["kappa"] is None else f"{p['kappa']:.2f}"
            lines.append(f"| {comparison.replace('_vs_', ' vs ')} | {' / '.join(p['judges'])} | "
                         f"{100 * (p['agreement'] or 0):.0f}% | {kappa} |")  # fmt: skip
    if report.get("rl_plot"):
        lines += ["", "## RL (RLOO) with its KL penalty: mean reward and KL to L2 per step", ""]
        lines.append("![reward against KL over the RL steps](../rl/reward_kl.png)")
    losses = [(n, v) for n, v in report["variants"].items() if "response_loss" in v]
    lines += [
        "",
        "## Held-out response loss (teacher-forced, no template)",
        "",
        "| model | loss | perplexity |",
    ]
    lines.append("|---|---|---|")
    lines += [f"| {label(n)} | {_num(v['response_loss'])} | {_num(v['perplexity'])} |" for n, v in losses]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Format and all-fields accuracy per variant and set, with their intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = report["variants"]
    names = list(variants)
    sets = list(report.get("sets", {}))
    fig, axes = plt.subplots(1, max(1, len(sets)), figsize=(6 * max(1, len(sets)), 3.8), squeeze=False)
    for ax, set_name in zip(axes[0], sets, strict=False):
        for offset, (metric, color) in enumerate((("format", "tab:green"), ("all", "tab:blue"))):
            values = [
                variants[n]["sets"].get(set_name, {}).get(metric)
                or variants[n]["sets"].get(set_name, {}).get("fields", {}).get(metric)
                for n in names
            ]
            xs = [i + 0.38 * offset for i in range(len(names))]
            rates = [v["rate"] if v else 0 for v in values]
            errors = [[r - (v["low"] if v else 0) for r, v in zip(rates, values, strict=True)],
                      [(v["high"] if v else 0) - r for r, v in zip(rates, values, strict=True)]]  # fmt: skip
            ax.bar(xs, rates, width=0.38, color=color, yerr=errors, capsize=3, label=metric)
        ax.set_xticks([i + 0.19 for i in range(len(names))], [label(n) for n in names], fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(SET_TITLES.get(set_name, set_name))
        ax.legend(["format", "all fields right"], fontsize=7, loc="upper left")
    fig.suptitle(f"{report['department']}: format and field accuracy (95% Wilson intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(folder: Path, report: dict[str, Any]) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(markdown(report))
    plot(report, folder / "report.png")


def summary(recipes: list[Any]) -> str:
    """The table per department and set, from the finished evaluations (what `make adapters` prints)."""
    out = []
    for recipe in recipes:
        folder = recipe.run_dir("eval")
        if not (folder / "report.json").is_file():
            out.append(f"{recipe.department}: no evaluation yet")
            continue
        report = json.loads((folder / "report.json").read_text())
        lines = [f"== {recipe.department} =="]
        for set_name, n in report.get("sets", {}).items():
            lines += [
                "",
                f"{SET_TITLES.get(set_name, set_name)}, {n} requests:",
                *set_table(report, set_name),
            ]
        for name, f in report.get("forgetting", {}).items():
            if f.get("gate"):
                g = f["gate"]
                verdict = "pass" if g["passed"] else "FAIL"
                lines.append(
                    f"forgetting {label(name)} vs base: {100 * g['diff']:+.1f} points "
                    f"({100 * g['low']:+.1f} to {100 * g['high']:+.1f}), gate {verdict}"
                )
        judge = report["judge"]
        for comparison, by_judge in report["win_rates"].items():
            if judge in by_judge:
                lines.append(
                    f"win rate {comparison.replace('_vs_', ' vs ')} ({judge}, the gate's judge): "
                    f"{cell(by_judge[judge])}"
                )
        lines += target_lines(report)
        rl_plot = recipe.run_dir("rl") / "reward_kl.png"
        if rl_plot.is_file():
            lines.append(f"RL reward against KL: {rl_plot}")
        lines.append(f"report: {folder / 'report.md'}")
        out.append("\n".join(lines))
    return "\n\n".join(out)
