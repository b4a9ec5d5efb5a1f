"""The soak's figures: one sample every few seconds, the run's totals, and the PNG over time.

``soak`` drives the load; this module turns its answers into samples (``sample``), the report's
totals and memory verdict (``summarise``) and the picture (``render``, matplotlib, in the style of
``dashboard_png``).
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from loadtests.probe import percentile

WARM_UP = 0.2  # the share of samples left out of the memory verdict: caches and pools fill meanwhile
FLAT_MB = 8.0  # memory is flat when RSS grows by less than this over the rest of the run ...
FLAT_SHARE = 0.03  # ... or by less than this share of it


@dataclass
class Answer:
    request_id: str
    ended: float  # monotonic
    seconds: float
    status: int
    completed: bool  # 200, and the whole body (JSON with choices, or [DONE] without an error event)
    kind: str  # chat, completions; " stream"
    scope: str  # tenant/department, as the mix names it
    error: str | None  # the error's code or type (a refusal's, or a stream's error event)
    retry_after: bool


@dataclass
class Sample:
    t: float  # seconds since the load began
    rss_mb: float  # the gateway process's resident memory
    busy: float  # its CPU seconds per second
    rps: float  # answers per second, any status
    ok_rps: float  # completed answers per second
    p50_ms: float  # of the completed answers in the interval
    p99_ms: float
    share_429: float  # of the answers in the interval
    count_5xx: int
    answers: int


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sample(t: float, elapsed: float, pid: int, answers: list[Answer], cpu: float) -> Sample:
    """The interval's figures; ``answers``: those that ended in it, ``cpu``: the gateway's CPU seconds."""
    latencies = [1000 * a.seconds for a in answers if a.completed]
    count = len(answers)
    return Sample(
        t=round(t, 2),
        rss_mb=round(rss_mb(pid), 2),
        busy=round(cpu / elapsed, 3),
        rps=round(count / elapsed, 1),
        ok_rps=round(len(latencies) / elapsed, 1),
        p50_ms=round(percentile(latencies, 50), 2) if latencies else 0.0,
        p99_ms=round(percentile(latencies, 99), 2) if latencies else 0.0,
        share_429=round(sum(a.status == 429 for a in answers) / count, 4) if count else 0.0,
        count_5xx=sum(a.status >= 500 for a in answers),
        answers=count,
    )


def memory(samples: list[Sample]) -> dict:
    """RSS after the warm-up: first and last (medians of three samples), slope, and the verdict."""
    kept = samples[int(len(samples) * WARM_UP) :]
    if len(kept) < 6:
        return {"flat": None, "note": "too few samples"}
    first = statistics.median(s.rss_mb for s in kept[:3])
    last = statistics.median(s.rss_mb for s in kept[-3:])
    minutes = [s.t / 60 for s in kept]
    slope = statistics.linear_regression(minutes, [s.rss_mb for s in kept]).slope
    growth = last - first
    return {
        "after_warm_up_mb": round(first, 1),
        "end_mb": round(last, 1),
        "growth_mb": round(growth, 1),
        "slope_mb_per_min": round(slope, 2),
        "peak_mb": round(max(s.rss_mb for s in samples), 1),
        "warm_up_min": round(kept[0].t / 60, 2),
        "flat": growth < max(FLAT_MB, FLAT_SHARE * first),
    }


def summarise(
    args: argparse.Namespace,
    served: str,
    samples: list[Sample],
    answers: list[Answer],
    sent: int,
    transport_errors: list[str],
) -> dict:
    completed = [1000 * a.seconds for a in answers if a.completed]
    seconds = samples[-1].t if samples else 1.0
    statuses = Counter(a.status for a in answers)
    refusals = Counter(f"{a.scope}: {a.status} {a.error}" for a in answers if a.status != 200)
    return {
        "args": vars(args),
        "model": served,
        "totals": {
            "sent": sent,
            "answers": len(answers),
            "completed": len(completed),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "429": statuses[429],
            "5xx": sum(v for k, v in statuses.items() if k >= 500),
            "stream_errors": sum(1 for a in answers if a.status == 200 and a.error),
            "transport_errors": len(transport_errors),
            "transport_error_examples": transport_errors[:5],
            "429_without_retry_after": sum(1 for a in answers if a.status == 429 and not a.retry_after),
            "rps": round(len(answers) / seconds, 1),
            "p50_ms": round(percentile(completed, 50), 2) if completed else None,
            "p99_ms": round(percentile(completed, 99), 2) if completed else None,
        },
        "refusals": dict(refusals.most_common()),
        "by_kind": dict(Counter(a.kind for a in answers if a.completed)),
        "by_scope": dict(Counter(a.scope for a in answers)),
        "memory": memory(samples),
    }


def render(samples: list[Sample], report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.t / 60 for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(13, 6.5), dpi=100, sharex=True)
    panels = [
        ("Gateway RSS", "MB", [("RSS", [s.rss_mb for s in samples])]),
        (
            "Latency of completed answers",
            "ms",
            [("p50", [s.p50_ms for s in samples]), ("p99", [s.p99_ms for s in samples])],
        ),
        (
            "Requests/s",
            "requests/s",
            [("all answers", [s.rps for s in samples]), ("completed", [s.ok_rps for s in samples])],
        ),
        (
            "Refused (429) and 5xx",
            "share of answers, %",
            [
                ("429", [100 * s.share_429 for s in samples]),
                ("5xx", [100 * s.count_5xx / max(1, s.answers) for s in samples]),
            ],
        ),
    ]
    for ax, (title, unit, series) in zip(axes.flat, panels, strict=True):
        for label, values in series:
            ax.plot(minutes, values, linewidth=1.2, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1.15 * max((v for _, values in series for v in values), default=0) or 1)
        ax.legend(fontsize=6, loc="upper left")
    for ax in axes[1]:
        ax.set_xlabel("minutes", fontsize=8)
    totals, ledger, mem = report["totals"], report["ledger"], report["memory"]
    fig.suptitle(
        f"loragate soak ({report['args']['engine']}, {report['args']['concurrency']} clients): "
        f"{totals['answers']} answers, {totals['429']} refused (429), {totals['5xx']} 5xx; "
        f"ledger {ledger['completed_rows']}/{ledger['completed_answers']} completed answers, "
        f"{ledger['lost_count']} lost; RSS {mem.get('after_warm_up_mb')} -> {mem.get('end_mb')} MB",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
