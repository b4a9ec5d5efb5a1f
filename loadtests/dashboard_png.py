"""Render the Grafana dashboard's key panels from a running Prometheus into one PNG.

    python -m loadtests.dashboard_png [--prometheus http://127.0.0.1:9090] [--minutes 5]
                                      [--out docs/dashboard.png]

The panels' expressions and titles are read from deploy/grafana/dashboards/loragate.json, so
the picture shows what the dashboard shows, without a Grafana. Needs matplotlib
(``pip install matplotlib``).

docs/dashboard.png was made this way, on the 2-core CPU machine: ``loragate serve`` on the packaged
SmolLM2 with two tenants (departments ``it`` and ``sales``, each with a demo LoRA adapter from
tests/demo_adapters.py), a Prometheus with deploy/prometheus/ (scrape interval 5 s), two minutes of
chat requests from 2 to 5 concurrent clients through both departments, streamed and not, 32 tokens
on average, a few of them refused (403, 404); then ``--minutes 3 --rate-interval 30s``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import httpx

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards" / "loragate.json"

# Panel title -> the targets (refId) to draw; the grid is filled row by row.
PANELS: dict[str, tuple[str, ...]] = {
    "Time to first token by department": ("A", "B"),  # p50, p95
    "End-to-end latency by department": ("B",),  # p95
    "Completion tokens/s by department and adapter": ("A",),
    "Requests by department and adapter": ("A",),
    "Errors by department and type": ("A",),
    "Inter-token latency and queue time (p95)": ("A", "B"),
}
UNITS = {"s": "seconds", "reqps": "requests/s", "short": "", "percentunit": "ratio", "bytes": "bytes"}


def panel_targets(dashboard: dict[str, Any], title: str, ref_ids: tuple[str, ...]) -> tuple[str, list[dict]]:
    """The panel's unit and its chosen targets (``expr``, ``legendFormat``)."""
    panel = next(p for p in dashboard["panels"] if p["title"] == title)
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    return unit, [t for t in panel["targets"] if t["refId"] in ref_ids]


def grafana_vars(expr: str, rate_interval: str) -> str:
    return expr.replace('"$department"', '".*"').replace("$__rate_interval", rate_interval)


def legend(template: str, labels: dict[str, str]) -> str:
    for name, value in labels.items():
        template = template.replace("{{" + name + "}}", value)
    return template


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    params = {"query": expr, "start": str(start), "end": str(end), "step": str(step)}
    response = httpx.get(f"{prometheus}/api/v1/query_range", params=params, timeout=30)
    response.raise_for_status()
    return response.json()["data"]["result"]


def render(prometheus: str, minutes: float, out: Path, rate_interval: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    end = time.time()
    start = end - minutes * 60
    step = max(minutes * 60 / 240, 1.0)
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), dpi=100, sharex=True)
    for ax, (title, ref_ids) in zip(axes.flat, PANELS.items(), strict=True):
        unit, targets = panel_targets(dashboard, title, ref_ids)
        for target in targets:
            for series in query_range(
                prometheus, grafana_vars(target["expr"], rate_interval), start, end, step
            ):
                points = [
                    (float(t) - start, float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf")
                ]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(
                        [x / 60 for x in xs],
                        ys,
                        linewidth=1.2,
                        label=legend(target["legendFormat"], series["metric"]),
                    )
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(UNITS.get(unit, unit), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left")
    for ax in axes[1]:
        ax.set_xlabel("minutes", fontsize=8)
    fig.suptitle("loragate (Grafana dashboard's key panels, from Prometheus)", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--minutes", type=float, default=5, help="the time range, ending now")
    parser.add_argument("--rate-interval", default="1m", help="the value of Grafana's $__rate_interval")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    args = parser.parse_args(argv)
    render(args.prometheus.rstrip("/"), args.minutes, args.out, args.rate_interval)


if __name__ == "__main__":
    main()
