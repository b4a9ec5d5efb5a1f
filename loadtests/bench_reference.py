"""Throughput at concurrency 64 beside the gateway of an earlier commit, in turns, on one machine.

    .venv/bin/python -m loadtests.bench_reference --ref f8b88b9 --rounds 5

Why: issue 17's throughput budget ("must stay >= 0.5x direct" at concurrency 64) was set against
a measurement of the gateway at f8b88b9 (0.56x non-streamed, 0.69x streamed; ../shared/FACTS.md)
with a load client that is not recorded. Against a client as cheap as ``bench_accounting``'s
own, no Python gateway on two shared cores comes near 0.5x (the bare relay gets 0.55x), so the
ratio moves with the client more than with the gateway. What the budget asks is that limits and
the ledger cost at most ~11% of the reference's non-streamed throughput (0.5 / 0.56) and ~28% of
its streamed one (0.5 / 0.69): this measures that, today's gateway (limits in memory, the SQLite
ledger) against the reference commit's (exported with ``git archive``; run with its own code
and today's virtualenv), in front of the same ``instant_openai`` stand-in, round by round in
alternating order, with the gateway's own HTTP/1.1 client. Prints the median requests/s, CPU
per request and the implied ratio to direct; writes bench-results/reference.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tqdm import tqdm

from loadtests.bench_accounting import throughput
from loadtests.common import MODEL, machine, targets
from loadtests.probe import cpu_seconds
from loadtests.servers import build_world, spawn_module, stop, wait_for
from service.model_store import prepare_model

FACTS_REF = "f8b88b9"
REFERENCE_RATIOS = {"non-streamed": 0.56, "streamed": 0.69}  # FACTS_REF's, in FACTS.md
TARGET = 0.5


def export(ref: str, into: Path) -> Path:
    """The tree of ``ref`` (``git archive``), unpacked into ``into``."""
    archive = subprocess.run(["git", "archive", "--format=tar", ref], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def gateway(
    tree: Path, root: Path, port: int, upstream: str, model_dir: Path, today: bool
) -> subprocess.Popen:
    """``loragate serve`` from ``tree`` (its own code on today's virtualenv), ready."""
    tenants = root / ("tenants.yaml" if today else "tenants-reference.yaml")
    args = [
        sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--log-level", "warning",
        "--model-path", str(model_dir), "--model-name", MODEL, "--dtype", "float32",
        "--tenants-file", str(tenants), "--keys-file", str(root / "keys.json"),
        "--registry-dir", str(root / "registry"), "--prompts-dir", str(root / "prompts"),
        "--engine", "vllm", "--upstream", upstream,
    ]  # fmt: skip
    if today:
        args += ["--ledger-url", f"sqlite:///{root / 'usage.db'}"]
    env = {**os.environ, "LORAGATE_API_KEY": "sk-bench-" + "x" * 24, "PYTHONPATH": str(tree)}
    log = (root / f"gateway-{port}.log").open("ab")
    process = subprocess.Popen(args, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for(f"http://127.0.0.1:{port}/ready", process)
    return process


def without_limits(tenants: str) -> str:
    """The bench's tenants file as an earlier gateway reads it (limits came with issue 17)."""
    lines = [line for line in tenants.splitlines() if "limits:" not in line]
    return "\n".join(lines).replace("      plain:\n", "      plain: {}\n") + "\n"


def main(args: argparse.Namespace) -> None:
    model_dir = prepare_model(Path("data/models/smollm2-135m-instruct"))
    root = Path(tempfile.mkdtemp(prefix="loragate-bench-reference-"))
    key = build_world(root, model_dir)
    (root / "tenants-reference.yaml").write_text(without_limits((root / "tenants.yaml").read_text()))
    trees = {"today": Path.cwd(), args.ref: export(args.ref, root / "reference")}
    upstream = f"http://127.0.0.1:{args.port}"
    stand_in = spawn_module(root / "instant.log", "loadtests.instant_openai", str(args.port))
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    rps: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    try:
        wait_for(f"{upstream}/health", stand_in)
        for offset, (name, tree) in enumerate(trees.items(), start=1):
            port = args.port + offset
            servers[name] = (gateway(tree, root, port, upstream, model_dir, name == "today"), port)
        with tqdm(total=args.rounds * 2 * (len(servers) + 1), unit="turn") as bar:
            for turn in range(args.rounds):
                for mode in REFERENCE_RATIOS:
                    names = [*servers, "direct"]
                    for name in names if turn % 2 == 0 else names[::-1]:
                        port = servers[name][1] if name != "direct" else args.port + 1
                        via, direct = targets(port, upstream, key, MODEL)
                        target = direct if name == "direct" else via
                        before = cpu_seconds(servers[name][0].pid).total if name != "direct" else 0.0
                        answers, seconds = throughput(
                            target, args.turn_seconds, mode == "streamed", 16, "http1"
                        )
                        rps.setdefault((name, mode), []).append(answers / seconds)
                        if name != "direct":
                            spent = cpu_seconds(servers[name][0].pid).total - before
                            cpu.setdefault((name, mode), []).append(1000 * spent / answers)
                        bar.update(1)
    finally:
        for process, _ in servers.values():
            stop(process)
        stop(stand_in)
    report = summary(args.ref, rps, cpu)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "reference.json").write_text(
        json.dumps({"machine": machine(), "args": vars(args), **report}, indent=2)
    )
    print(f"\nwritten: {out / 'reference.json'}")


def summary(
    ref: str, rps: dict[tuple[str, str], list[float]], cpu: dict[tuple[str, str], list[float]]
) -> dict:
    print(f"\n{machine()}\nconcurrency 64, 16-token answers, own HTTP/1.1 client; medians over rounds")
    print(f"{'':<14}{'today rps':>11}{ref + ' rps':>14}{'kept':>8}{'CPU ms today/ref':>19}{'implied':>10}")
    modes = {}
    for mode, reference_ratio in REFERENCE_RATIOS.items():
        today, then = statistics.median(rps[("today", mode)]), statistics.median(rps[(ref, mode)])
        kept = today / then
        implied = reference_ratio * kept if FACTS_REF.startswith(ref[:7]) else float("nan")
        cpu_today, cpu_then = statistics.median(cpu[("today", mode)]), statistics.median(cpu[(ref, mode)])
        verdict = "met" if implied >= TARGET else "missed"
        print(
            f"{mode:<14}{today:>11.0f}{then:>14.0f}{kept:>8.2f}x{cpu_today:>9.3f}/{cpu_then:.3f}"
            f"{implied:>9.2f}x  ({verdict}: {reference_ratio}x at {ref} x {kept:.2f})"
        )
        modes[mode] = {
            "rps": today, "reference_rps": then, "kept": kept, "implied_ratio": implied,
            "cpu_ms": cpu_today, "reference_cpu_ms": cpu_then,
            "direct_rps": statistics.median(rps[("direct", mode)]),
            "rps_turns": rps[("today", mode)], "reference_rps_turns": rps[(ref, mode)],
        }  # fmt: skip
    return {"reference": ref, "modes": modes}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ref", default="f8b88b9", help="the earlier commit (FACTS.md measured f8b88b9)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--turn-seconds", type=float, default=3.0)
    parser.add_argument(
        "--port", type=int, default=8031, help="the stand-in's; the gateways take the next two"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
