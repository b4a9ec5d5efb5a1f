"""The gateway in front of vLLM against vLLM directly, then the embedded engine, on one model and load.

    make bench        # or: .venv/bin/python -m loadtests.bench_vllm --help

Model: the packaged SmolLM2-135M-Instruct in float32, with two demo LoRA adapters (rank 8)
in a registry; tenant ``acme`` has departments ``plain`` (base), ``it`` and ``legal``.
Load: ``--concurrency`` clients stream chat completions of exactly ``--new-tokens`` tokens
(EOS ignored, greedy); requests cycle base, it, legal. The same requests go

- through the gateway (``loragate serve --engine vllm --upstream ...``, its own process), and
- to vLLM directly (``model`` = the adapter's name in vLLM, the same messages),

in alternating rounds after a warm-up of each, so that both see the same machine. On a CPU
host the difference in their latency is lost in vLLM's own spread on requests this long; what
the gateway adds to each request is resolved by a paired probe (one-token requests, one at a
time, gateway and direct in turn) against vLLM serving a tiny random model, whose compute is
negligible, as on a GPU (``bench_vllm_probe.py``). It prints the added p50 with its 95%
interval, whether that shows the target met, and the gateway process's CPU time per request
(``probe.cpu_seconds``). A bare relay (``floor_relay.py``: none of the gateway's work) is
probed in turns with the gateway against the same vLLM, for scale. The probe runs again with
``instant_upstream`` (a stand-in that answers at once) in vLLM's place: what the gateway adds
there is its own work (``bench_instant.py``, beside a bare relay for scale, each also on a core
of its own). Then the embedded engine (``loragate serve --engine local``) serves the same load.
Figures: tokens/s over each round, per-request latency (start to last byte) and time to first
token, printed and written to ``bench-results/vllm.json``. The latest report, with its machine
and date: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

from loadtests.bench_instant import bench_instant
from loadtests.bench_vllm_probe import probe_tiny_vllm, report_tiny
from loadtests.common import DEPARTMENTS, DIRECT, MODEL, PROMPTS, VIA, Target, machine, one, targets
from loadtests.probe import percentile
from loadtests.servers import build_world, start_gateway, stop
from loadtests.vllm_server import start_cpu_vllm
from service.model_store import prepare_model

EMBEDDED = "gateway -> embedded engine"


@dataclass
class Round:
    target: str
    seconds: float
    tokens: int
    latencies: list[float] = field(default_factory=list)
    first_tokens: list[float] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


async def run_round(target: Target, requests: int, concurrency: int, new_tokens: int, bar: tqdm) -> Round:
    jobs = [(DEPARTMENTS[i % 3], PROMPTS[i % len(PROMPTS)]) for i in range(requests)]
    result = Round(target.name, 0.0, 0)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker() -> None:
            while jobs:
                department, prompt = jobs.pop()
                latency, first, tokens = await one(client, target, department, prompt, new_tokens)
                result.latencies.append(latency)
                result.first_tokens.append(first)
                result.tokens += tokens
                bar.update(1)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - started
    return result


def summarise(rounds: list[Round]) -> dict[str, float]:
    latencies = [x for r in rounds for x in r.latencies]
    firsts = [x for r in rounds for x in r.first_tokens]
    return {
        "tokens_per_second": statistics.mean(r.tokens_per_second for r in rounds),
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "ttft_p50_ms": 1000 * percentile(firsts, 50),
        "rounds": len(rounds),
    }


def print_table(summary: dict[str, dict[str, float]]) -> None:
    print(f"\n{'target':<28}{'rounds':>7}{'tok/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'TTFT p50':>10}")
    for name, s in summary.items():
        print(
            f"{name:<28}{s['rounds']:>7}{s['tokens_per_second']:>9.1f}{s['p50_ms']:>9.1f}"
            f"{s['p99_ms']:>9.1f}{s['ttft_p50_ms']:>10.1f}"
        )
    gateway, direct = summary[VIA], summary[DIRECT]
    ratio = gateway["tokens_per_second"] / direct["tokens_per_second"]
    print(f"\ngateway/direct throughput: {ratio:.3f}x (target >= 0.95)")
    added, added_p99 = gateway["p50_ms"] - direct["p50_ms"], gateway["p99_ms"] - direct["p99_ms"]
    print(f"the rounds' added latency: p50 {added:+.1f} ms, p99 {added_p99:+.1f} ms: vLLM's spread on "
          f"{direct['p50_ms'] / 1000:.0f}-s requests (the paired probe measures the target)")  # fmt: skip


def rounds_of(target: Target, args: argparse.Namespace, count: int, bar: tqdm) -> list[Round]:
    return [
        asyncio.run(run_round(target, args.requests, args.concurrency, args.new_tokens, bar))
        for _ in range(count)
    ]


def bench_vllm(
    args: argparse.Namespace, root: Path, model_dir: Path, key: str
) -> tuple[dict[str, list[Round]], Target]:
    """Gateway -> vLLM and vLLM direct, in alternating rounds."""
    vllm = start_cpu_vllm(
        model_dir, MODEL, args.vllm_port, root / "vllm.log", max_lora_rank=8, max_num_seqs=32
    )
    gateway_args = ["--engine", "vllm", "--upstream", vllm.url]
    gateway = start_gateway(root, args.gateway_port, gateway_args, model_dir, root / "gateway.log")
    via, direct = targets(args.gateway_port, vllm.url, key, MODEL)
    rounds: dict[str, list[Round]] = {VIA: [], DIRECT: []}
    try:
        with tqdm(total=args.requests * (2 * args.rounds + 2), desc="vLLM rounds", unit="req") as bar:
            for target in (via, direct):  # warm-up: adapters loaded, connection pools filled
                rounds_of(target, args, 1, bar)
            for _ in range(args.rounds):
                for target in (via, direct):
                    rounds[target.name] += rounds_of(target, args, 1, bar)
    finally:
        stop(gateway)
        vllm.stop()
    return rounds, via


def bench_embedded(args: argparse.Namespace, root: Path, model_dir: Path, via: Target) -> list[Round]:
    """The same load on ``loragate serve --engine local`` (vLLM stopped by now)."""
    local = start_gateway(root, args.gateway_port, ["--engine", "local"], model_dir, root / "local.log")
    embedded = Target(EMBEDDED, via.url, via.headers, via.models, True)
    try:
        total = args.requests * (1 + args.embedded_rounds)
        with tqdm(total=total, desc="embedded rounds", unit="req") as bar:
            rounds_of(embedded, args, 1, bar)  # warm-up
            return rounds_of(embedded, args, args.embedded_rounds, bar)
    finally:
        stop(local)


def main(args: argparse.Namespace) -> None:
    model_dir = prepare_model(Path("data/models/smollm2-135m-instruct"))
    root = Path(tempfile.mkdtemp(prefix="loragate-bench-"))
    key = build_world(root, model_dir)
    print(f"{machine()}\nstarting vLLM (30-70 s) and the gateway; logs in {root}")
    rounds, via = bench_vllm(args, root, model_dir, key)
    figures = report_tiny(probe_tiny_vllm(args, root, model_dir))

    instant, figures["fairness"], figures["client"] = bench_instant(args, root, model_dir, key)
    titles = ("the same probe, an upstream that answers at once", "the same, on a core of its own")
    for name, runs in instant.items():
        print(f"{name}:" if name == "gateway" else "for scale, a bare relay (loadtests/floor_relay.py):")
        for title, probe, suffix in zip(titles, runs, ("", "_own_core"), strict=False):
            figures[f"instant_upstream_{name}{suffix}"] = probe.report(f"  {title}")
    if args.embedded_rounds:
        rounds[EMBEDDED] = bench_embedded(args, root, model_dir, via)
    summary = {name: summarise(rs) for name, rs in rounds.items()}
    print_table(summary)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    rows = {n: [asdict(r) for r in rs] for n, rs in rounds.items()}
    report = {"machine": machine(), "args": vars(args), "summary": summary, "probe": figures, "rounds": rows}
    (out / "vllm.json").write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {out / 'vllm.json'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=32, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds of each vLLM target")
    parser.add_argument("--embedded-rounds", type=int, default=1, help="0: skip the embedded engine")
    parser.add_argument(
        "--probe-pairs",
        type=int,
        default=1000,
        help="one-token requests to the gateway and to vLLM (tiny model)",
    )
    parser.add_argument("--instant-pairs", type=int, default=300, help="the probe against instant_upstream")
    parser.add_argument("--vllm-port", type=int, default=8011)
    parser.add_argument("--gateway-port", type=int, default=8012)
    parser.add_argument("--floor-port", type=int, default=8013, help="the bare relay beside the gateway")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
