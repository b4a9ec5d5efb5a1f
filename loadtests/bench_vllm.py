"""The gateway in front of vLLM against vLLM directly, then the embedded engine, on one model and load.

    make bench        # or: .venv/bin/python -m loadtests.bench_vllm --help

Model: the packaged SmolLM2-135M-Instruct in float32, with two demo LoRA adapters (rank 8)
in a registry; tenant ``acme`` has departments ``plain`` (base), ``it`` and ``legal``.
Load: ``--concurrency`` clients stream chat completions of exactly ``--new-tokens`` tokens
(EOS ignored, greedy); requests cycle base, it, legal. The same requests go

- through the gateway (``loragate serve --engine vllm --upstream ...``, its own process), and
- to vLLM directly (``model`` = the adapter's name in vLLM, the same messages),

in alternating rounds after a warm-up of each, so that both see the same machine. Their added
latency is vLLM's spread on requests of half a minute; what the gateway adds to each request is
resolved by a paired probe (one-token requests, one at a time, gateway and direct in turn)
against vLLM serving a tiny random model, whose compute is negligible, as on a GPU
(``bench_vllm_probe.py``). It prints the added p50 with its 95% interval, whether that shows the
target met, and the gateway process's CPU time per request (``probe.cpu_seconds``). A bare relay
(``floor_relay.py``: none of the gateway's work) is probed in turns with the gateway against the
same vLLM, for scale. The probe runs again with ``instant_upstream`` (a stand-in that answers at
once) in vLLM's place: what the gateway adds there is its own work (``bench_instant.py``, beside
a bare relay for scale, each also on a core of its own). Then the embedded engine (``loragate
serve --engine local``) serves the same load. Figures: tokens/s over each round, per-request
latency (start to last byte) and time to first token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

from loadtests.bench_engine import PROMPTS, machine
from loadtests.probe import Probe, cpu_seconds, per_request_ms, percentile
from loadtests.vllm_server import start_cpu_vllm
from service.model_store import prepare_model

MODEL = "SmolLM2-135M-Instruct"
TARGET_MS = 2.0  # the target for what the gateway adds, p50
VIA, DIRECT, EMBEDDED = "gateway -> vLLM", "vLLM direct", "gateway -> embedded engine"
FLOOR = "floor relay"
DEPARTMENTS = ("plain", "it", "legal")
TENANTS = """
tenants:
  acme:
    default_department: plain
    departments:
      plain: {}
      it: {adapter: acme-it}
      legal: {adapter: acme-legal}
"""


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


@dataclass
class Target:
    """Where requests go and how each department's request is addressed there."""

    name: str
    url: str  # .../v1/chat/completions
    headers: dict[str, str]
    models: dict[str, str]  # department -> body "model"
    department_header: bool


async def one(client: httpx.AsyncClient, target: Target, department: str, prompt: str, new_tokens: int):
    body = {
        "model": target.models[department],
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": new_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = target.headers | ({"X-Department": department} if target.department_header else {})
    started = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", target.url, json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return time.perf_counter() - started, first or 0.0, tokens


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


async def paired_probe(
    via: Target, direct: Target, pairs: int, gateway_pid: int, bar: tqdm, upstream_pid: int | None = None
) -> Probe:
    """Added latency without load noise: one-token requests, gateway and direct in turn, one at a time.

    The order alternates, so neither side always comes second (warm caches, a woken vLLM).
    """
    added = []
    gateway_before = cpu_seconds(gateway_pid)
    upstream_before = cpu_seconds(upstream_pid) if upstream_pid else None
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(pairs):
            department, prompt = DEPARTMENTS[i % 3], PROMPTS[i % len(PROMPTS)]
            latency = {}
            for target in (via, direct) if i % 2 == 0 else (direct, via):
                latency[target.name] = (await one(client, target, department, prompt, 1))[0]
            added.append(latency[via.name] - latency[direct.name])
            bar.update(1)
    gateway = per_request_ms(gateway_pid, gateway_before, pairs)
    upstream = None
    if upstream_pid and upstream_before:  # it serves both sides of each pair
        upstream = per_request_ms(upstream_pid, upstream_before, 2 * pairs)
    return Probe(added, gateway, upstream)


def build_world(root: Path, model_dir: Path, served: str = MODEL) -> str:
    """Registry with two demo adapters on ``model_dir`` (served as ``served``), tenants file, an API
    key for acme. Returns the key."""
    from adapters.demo import build
    from service.keys import KeyStore
    from service.registry import Registry
    from service.tenancy import TenantDirectory

    registry = Registry(root / "registry", served, base_aliases=(str(model_dir), model_dir.name))
    for seed, name in ((1, "acme-it"), (2, "acme-legal")):
        trained = build(model_dir, root / "trained" / name, seed=seed)
        adapter = registry.publish(trained, name=name, level="L2")
        registry.promote(name, adapter.ref)
    (root / "tenants.yaml").write_text(TENANTS)
    (root / "prompts").mkdir(exist_ok=True)
    return KeyStore(root / "keys.json", TenantDirectory(root / "tenants.yaml", served)).create("acme")[1]


def start_gateway(
    root: Path, port: int, engine: list[str], model_dir: Path, log: Path, served: str = MODEL
) -> subprocess.Popen:
    args = [
        str(Path(".venv/bin/loragate").resolve()), "serve", "--port", str(port), "--log-level", "warning",
        "--model-path", str(model_dir), "--model-name", served, "--dtype", "float32",
        "--tenants-file", str(root / "tenants.yaml"), "--keys-file", str(root / "keys.json"),
        "--registry-dir", str(root / "registry"), "--prompts-dir", str(root / "prompts"),
        "--max-batch-size", "16", "--default-max-tokens", "64", *engine,
    ]  # fmt: skip
    env = {**os.environ, "LORAGATE_API_KEY": "sk-bench-" + "x" * 24}
    with log.open("ab") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the gateway did not become ready; see {log}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


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


def targets(gateway_port: int, upstream: str, key: str, served: str) -> tuple[Target, Target]:
    """The gateway (tenant acme's key, a department header) and its upstream addressed directly."""
    via = Target(VIA, f"http://127.0.0.1:{gateway_port}/v1/chat/completions",
                 {"Authorization": f"Bearer {key}"}, dict.fromkeys(DEPARTMENTS, served), True)  # fmt: skip
    direct = Target(DIRECT, f"{upstream}/v1/chat/completions", {},
                    {"plain": served, "it": "acme-it@1", "legal": "acme-legal@1"}, False)  # fmt: skip
    return via, direct


def spawn_module(log: Path, module: str, *argv: str) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", module, *argv], stdout=out, stderr=subprocess.STDOUT)


def start_floor(
    port: int, upstream: str, models: dict[str, str], log: Path
) -> tuple[subprocess.Popen, Target]:
    """The bare relay (``floor_relay``) in front of ``upstream``, answering, and its target."""
    relay = spawn_module(log, "loadtests.floor_relay", str(port), upstream)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", relay)
    except RuntimeError:
        stop(relay)
        raise
    return relay, Target(FLOOR, f"http://127.0.0.1:{port}/v1/chat/completions", {}, models, False)


def wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


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
    from loadtests.bench_instant import bench_instant  # these build on this module
    from loadtests.bench_vllm_probe import probe_tiny_vllm, report_tiny

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
