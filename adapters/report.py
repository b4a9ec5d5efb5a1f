"""The evaluation report: report.json, report.md and report.png in the eval run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(report: dict[str, Any]) -> str:
    variants: dict[str, dict[str, Any]] = report["variants"]
    lines = [
        f"# Evaluation: {report['department']}",
        "",
        f"{report['held_out_rows']} held-out rows; greedy answers in float32; judge: {report['judge']}.",
        "",
        "| model | response loss | perplexity | loss vs base | format compliance | ROUGE-L |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in variants.items():
        lines.append(
            f"| {name} | {_num(r['response_loss'])} | {_num(r['perplexity'])} | "
            f"{'-' if name == 'base' else '-' + _pct(r.get('loss_reduction'))} | "
            f"{_pct(r.get('format_compliance'))} | {_num(r.get('rouge_l'))} |"
        )
    lines += ["", "## Win rates (ties count half)", "", "| comparison | judge | win rate | W / T / L |"]
    lines.append("|---|---|---|---|")
    for comparison, by_judge in report["win_rates"].items():
        for judge, w in by_judge.items():
            lines.append(
                f"| {comparison.replace('_vs_', ' vs ')} | {judge} | {_pct(w['win_rate'])} | "
                f"{w['wins']} / {w['ties']} / {w['losses']} |"
            )
    lines += [
        "",
        "## Per category",
        "",
        "| model | category | n | format | ROUGE-L |",
        "|---|---|---|---|---|",
    ]
    for name, r in variants.items():
        for category, c in r["per_category"].items():
            lines.append(
                f"| {name} | {category} | {c['n']} | {_pct(c.get('format'))} | {_num(c.get('rouge_l'))} |"
            )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = report["variants"]
    names = list(variants)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].bar(names, [variants[n]["response_loss"] for n in names], color="tab:blue")
    axes[0].set_title("held-out response loss")
    axes[1].bar(names, [variants[n].get("format_compliance") or 0 for n in names], color="tab:green")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("format compliance")
    labels, rates = [], []
    for comparison, by_judge in report["win_rates"].items():
        w = by_judge.get(report["judge"])
        if w is not None:
            labels.append(comparison.replace("_vs_", "\nvs "))
            rates.append(w["win_rate"])
    axes[2].bar(labels, rates, color="tab:orange")
    axes[2].axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    axes[2].set_ylim(0, 1)
    axes[2].set_title(f"win rate ({report['judge']} judge)")
    fig.suptitle(f"{report['department']}: base vs L2 vs L3 on held-out prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(folder: Path, report: dict[str, Any]) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(markdown(report))
    plot(report, folder / "report.png")


def summary(recipes: list[Any]) -> str:
    """One block of figures per department, from its finished runs (what `make adapters` prints)."""
    out = []
    for recipe in recipes:
        folder = recipe.run_dir("eval")
        if not (folder / "report.json").is_file():
            out.append(f"{recipe.department}: no evaluation yet")
            continue
        report = json.loads((folder / "report.json").read_text())
        v = report["variants"]
        sft = json.loads((recipe.run_dir("sft") / "metrics.json").read_text())
        l3 = recipe.publish.l3
        lines = [
            f"== {recipe.department} ({report['held_out_rows']} held-out rows) ==",
            f"  L2 sft: trained in {sft['train_runtime_s']:.0f} s ({sft['global_step']} steps)",
            f"  response loss  base {_num(v['base']['response_loss'])} -> "
            f"L2 {_num(v['sft']['response_loss'])} ({_pct(v['sft'].get('loss_reduction'))} lower)",
            f"  format         base {_pct(v['base'].get('format_compliance'))} -> L2 "
            f"{_pct(v['sft'].get('format_compliance'))}"
            + (f" -> L3 {l3} {_pct(v[l3].get('format_compliance'))}" if l3 in v else ""),
        ]
        for comparison, by_judge in report["win_rates"].items():
            rates = ", ".join(f"{judge} {_pct(w['win_rate'])}" for judge, w in by_judge.items())
            lines.append(f"  win rate {comparison.replace('_vs_', ' vs ')}: {rates}")
        lines.append(f"  report: {folder / 'report.md'}")
        out.append("\n".join(lines))
    return "\n".join(out)
