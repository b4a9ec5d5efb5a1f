"""A bounded soak of one gateway process: memory flat, no ledger row lost, no 5xx, limits hit.

    .venv/bin/python -m loadtests.soak                  # 10 minutes, in front of the instant stand-in
    .venv/bin/python -m loadtests.soak --minutes 3 --engine local   # the embedded engine, tiny model

Not part of CI or ``make bench``. One ``loragate serve`` process, with its SQLite ledger and its
limits in memory, serves a mix for ``--minutes``:

- two tenants with two departments each (``TENANTS``): ``acme`` (``support``; ``legal``, with a
  demo LoRA adapter) and ``globex`` (``sales``; ``research``, whose ``requests_per_minute`` is
  small, so that its requests are refused with 429 most of the time); every scope has limits;
- four keys: one per tenant for all its departments, one pinned to ``legal`` with limits of
  its own, one pinned to ``research``;
- chat and completions, streamed and not (``stream_options.include_usage`` on half the streams),
  ``--concurrency`` clients without pause, each request with its own ``x-request-id``.

``--engine instant`` (the default) puts the gateway in front of ``instant_openai`` (a stand-in
that answers at once), so the gateway itself is what is soaked, at the highest rate it holds;
``--engine local`` runs the embedded engine in process on a 2-layer random Llama
(``testkit/tiny_llama.py``), so batching, adapters and the engine's own memory are soaked too.

Every ``--interval`` seconds it samples the gateway's RSS and CPU, the answers' p50/p99 latency
(200s), requests/s, the share of 429s and the count of 5xx. At the end the gateway is stopped
(SIGTERM: its ledger is flushed) and its ledger (the SQLite file) is read. The run fails (exit
status 1) on any of: a 5xx; a stream ended by an error event or without ``[DONE]``; a request
without an answer; an answered request without exactly one ledger row with the status the
client saw (a lost row); no 429 at all, or one without ``Retry-After``; RSS grown after the
warm-up (the first fifth of the run) by 8 MB and 3% or more (``soak_report.memory``); a gateway
that did not stop cleanly. The report (JSON) and a PNG over time (``soak_report``) go to
``--out`` (bench-results/soak/). The latest figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import signal
import sqlite3
import tempfile
import time
from collections import Counter
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import uvloop

from loadtests.common import PROMPTS, machine
from loadtests.probe import cpu_seconds
from loadtests.servers import spawn_module, start_gateway, stop, wait_for
from loadtests.soak_report import Answer, Sample, render, sample, summarise
from service.engines.vllm.http1 import Http1Transport
from service.limits import Limits

SMOLLM2 = Path("data/models/smollm2-135m-instruct")
TENANTS = """
tenants:
  acme:
    default_department: support
    limits: {requests_per_minute: 10000000, tokens_per_minute: 10000000000, tokens_per_day: 1000000000000}
    departments:
      support:
        limits: {requests_per_minute: 10000000, concurrent_requests: 10000}
      legal:
        adapter: acme-legal
        limits: {tokens_per_minute: 10000000000, tokens_per_month: 1000000000000}
  globex:
    default_department: sales
    limits: {requests_per_minute: 10000000, tokens_per_month: 1000000000000}
    departments:
      sales:
        limits: {requests_per_minute: 10000000, concurrent_requests: 10000}
      research:
        limits: {requests_per_minute: 120}
"""
# (key, department header or None for the key's own, what the report calls it, share of requests)
MIX = [
    ("acme", "support", "acme/support", 3),
    ("acme", "legal", "acme/legal", 2),
    ("acme-legal", None, "acme/legal, own key", 2),
    ("globex", "sales", "globex/sales", 3),
    ("globex", "research", "globex/research", 1),
    ("globex-research", None, "globex/research, own key", 1),
]
MAX_TOKENS = 16


@dataclass
class World:
    root: Path
    model_dir: Path
    served: str
    keys: dict[str, str]  # name -> secret


def build_world(root: Path, engine: str) -> World:
    """Registry (one demo adapter for acme's legal), tenants file, four keys."""
    from adapters.demo import build
    from service.keys import KeyStore
    from service.model_store import prepare_model
    from service.registry import Registry
    from service.tenancy import TenantDirectory

    smollm2 = prepare_model(SMOLLM2)
    if engine == "local":
        from testkit.tiny_llama import write_tiny_llama

        model_dir, served = write_tiny_llama(root / "tiny-llama", smollm2), "tiny-llama"
    else:
        model_dir, served = smollm2, "SmolLM2-135M-Instruct"  # what the stand-in serves
    registry = Registry(root / "registry", served, base_aliases=(str(model_dir), model_dir.name))
    adapter = registry.publish(
        build(model_dir, root / "trained" / "acme-legal", seed=1), name="acme-legal", level="L2"
    )
    registry.promote("acme-legal", adapter.ref)
    (root / "tenants.yaml").write_text(TENANTS)
    (root / "prompts").mkdir(exist_ok=True)
    store = KeyStore(root / "keys.json", TenantDirectory(root / "tenants.yaml", served))
    keys = {
        "acme": store.create("acme")[1],
        "acme-legal": store.create("acme", "legal", limits=Limits(requests_per_minute=10_000_000))[1],
        "globex": store.create("globex")[1],
        "globex-research": store.create("globex", "research")[1],
    }
    return World(root, model_dir, served, keys)


@dataclass
class Load:
    answers: list[Answer] = field(default_factory=list)  # in the order they ended
    sent: int = 0
    transport_errors: list[str] = field(default_factory=list)


def request_for(n: int, rng: random.Random, world: World) -> tuple[str, dict, dict[str, str], str, str]:
    """The n-th request: (path, body, headers, kind, scope)."""
    key, department, scope, _ = rng.choices(MIX, weights=[mix[-1] for mix in MIX])[0]
    stream, chat = rng.random() < 0.5, rng.random() < 0.6
    body: dict = {"model": world.served, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream}
    prompt = PROMPTS[n % len(PROMPTS)]
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if stream and n % 4 < 2:
        body["stream_options"] = {"include_usage": True}
    headers = {"authorization": f"Bearer {world.keys[key]}", "x-request-id": f"soak-{n}"}
    if department:
        headers["x-department"] = department
    kind = f"{'chat' if chat else 'completions'}{' stream' if stream else ''}"
    return ("/v1/chat/completions" if chat else "/v1/completions"), body, headers, kind, scope


async def one(client: httpx.AsyncClient, n: int, rng: random.Random, world: World, load: Load) -> None:
    path, body, headers, kind, scope = request_for(n, rng, world)
    started = time.perf_counter()
    completed, error = False, None
    async with client.stream("POST", path, json=body, headers=headers) as response:
        if response.status_code == 200 and body["stream"]:
            async for line in response.aiter_lines():
                if line.startswith('data: {"error"'):
                    error = json.loads(line[6:])["error"].get("type", "unknown")
                elif line == "data: [DONE]":
                    completed = error is None
            if not completed and error is None:
                error = "no [DONE]"
        else:
            content = await response.aread()
            if response.status_code == 200:
                completed = bool(json.loads(content)["choices"])
            else:
                error = _error_code(content)
        retry_after = "retry-after" in response.headers
    load.answers.append(
        Answer(
            request_id=headers["x-request-id"],
            ended=time.monotonic(),
            seconds=time.perf_counter() - started,
            status=response.status_code,
            completed=completed,
            kind=kind,
            scope=scope,
            error=error,
            retry_after=retry_after,
        )
    )


def _error_code(content: bytes) -> str:
    try:
        error = json.loads(content)["error"]
        return str(error.get("code") or error.get("type"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "unparsed"


async def drive(
    url: str, world: World, args: argparse.Namespace, gateway_pid: int, samples: list[Sample]
) -> Load:
    load, rng = Load(), random.Random(args.seed)
    deadline = time.monotonic() + 60 * args.minutes
    transport = Http1Transport(max_connections=args.concurrency)
    numbers = itertools.count()
    client = httpx.AsyncClient(base_url=url, transport=transport, timeout=120)  # one: it owns the pool

    async def worker() -> None:
        while time.monotonic() < deadline:
            n = next(numbers)
            load.sent += 1
            try:
                await one(client, n, rng, world, load)
            except httpx.TransportError as exc:
                load.transport_errors.append(f"soak-{n}: {exc!r}")

    async def sampler() -> None:
        started, seen = time.monotonic(), 0
        then, cpu = started, cpu_seconds(gateway_pid).total
        while time.monotonic() < deadline:
            await asyncio.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))
            now, cpu_now = time.monotonic(), cpu_seconds(gateway_pid).total
            new, seen = load.answers[seen:], len(load.answers)
            samples.append(sample(now - started, now - then, gateway_pid, new, cpu_now - cpu))
            then, cpu = now, cpu_now
            last = samples[-1]
            print(
                f"{last.t / 60:5.1f} min  RSS {last.rss_mb:6.1f} MB  {last.rps:6.0f} req/s  "
                f"p50 {last.p50_ms:6.1f} ms  p99 {last.p99_ms:6.1f} ms  429 {100 * last.share_429:4.1f}%  "
                f"5xx {last.count_5xx}  CPU {last.busy:.2f}",
                flush=True,
            )

    try:
        await asyncio.gather(sampler(), *(worker() for _ in range(args.concurrency)))
    finally:
        await client.aclose()
    return load


def ledger_rows(path: Path) -> list[tuple[str, int]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT request_id, status FROM usage_records").fetchall()


def check_ledger(load: Load, rows: list[tuple[str, int]]) -> dict:
    """Each answered request in the ledger exactly once, with the status the client saw."""
    ledger = dict(rows)
    seen = {a.request_id: a.status for a in load.answers}
    completed = {a.request_id for a in load.answers if a.completed}
    return {
        "rows": len(rows),
        "answers": len(seen),
        "completed_answers": len(completed),
        "completed_rows": sum(1 for request_id in completed if ledger.get(request_id) == 200),
        "lost": sorted(set(seen) - set(ledger))[:20],
        "lost_count": len(set(seen) - set(ledger)),
        "duplicates": len(rows) - len(ledger),
        "unknown": len(set(ledger) - set(seen)),
        "status_mismatches": sum(
            1 for request_id, status in seen.items() if ledger.get(request_id, status) != status
        ),
        "statuses": dict(Counter(status for _, status in rows)),
    }


def main(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="loragate-soak-"))
    world = build_world(root, args.engine)
    ledger = root / "usage.db"
    flags = ["--ledger-url", f"sqlite:///{ledger}", "--log-level", "warning"]
    stand_in = None
    if args.engine == "instant":
        upstream = f"http://127.0.0.1:{args.upstream_port}"
        stand_in = spawn_module(root / "instant.log", "loadtests.instant_openai", str(args.upstream_port))
        wait_for(f"{upstream}/health", stand_in)
        flags += ["--engine", "vllm", "--upstream", upstream]
    else:
        flags += ["--engine", "local", "--threads", "1"]
    print(f"{machine()}\nsoak: {args.minutes} min, engine {args.engine}, {args.concurrency} clients")
    print(f"logs and the ledger in {root}")
    samples: list[Sample] = []
    try:
        gateway = start_gateway(root, args.port, flags, world.model_dir, root / "gateway.log", world.served)
        try:
            url = f"http://127.0.0.1:{args.port}"
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                load = runner.run(drive(url, world, args, gateway.pid, samples))
        finally:
            stop(gateway)  # SIGTERM: the ledger is flushed on the way out
        exit_code = gateway.returncode
    finally:
        if stand_in is not None:
            stop(stand_in)
    report = summarise(args, world.served, samples, load.answers, load.sent, load.transport_errors)
    report["machine"] = machine()
    report["gateway_exit_code"] = exit_code
    report["ledger"] = check_ledger(load, ledger_rows(ledger))
    report["samples"] = [asdict(s) for s in samples]
    failures = failed_checks(report)
    report["checks_failed"] = failures
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"soak-{args.engine}-{time.strftime('%Y%m%d-%H%M%S')}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    render(samples, report, out / f"{stem}.png")
    print(json.dumps({k: report[k] for k in ("totals", "memory", "ledger")}, indent=2))
    print(f"written: {out / stem}.json, .png")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


def failed_checks(report: dict) -> list[str]:
    totals, ledger = report["totals"], report["ledger"]
    failures = []
    if totals["5xx"]:
        failures.append(f"{totals['5xx']} answers with a 5xx status")
    if totals["stream_errors"]:
        failures.append(f"{totals['stream_errors']} streams ended by an error event or without [DONE]")
    if totals["transport_errors"]:
        failures.append(f"{totals['transport_errors']} requests got no answer (transport errors)")
    if ledger["lost_count"] or ledger["completed_rows"] != ledger["completed_answers"]:
        failures.append(f"ledger rows lost: {ledger['lost_count']} (e.g. {ledger['lost'][:5]})")
    if ledger["duplicates"] or ledger["unknown"] or ledger["status_mismatches"]:
        failures.append(f"ledger rows wrong: {ledger}")
    if not totals["429"]:
        failures.append("no request was refused: the limits were not hit")
    if totals["429_without_retry_after"]:
        failures.append(f"{totals['429_without_retry_after']} refusals without Retry-After")
    if report["memory"].get("flat") is False:
        failures.append(f"memory grew: {report['memory']}")
    if report["gateway_exit_code"] not in (0, -signal.SIGTERM):  # uvicorn raises it again once it stopped
        failures.append(f"the gateway exited with {report['gateway_exit_code']} on SIGTERM")
    return failures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs")
    parser.add_argument("--engine", choices=("instant", "local"), default="instant")
    parser.add_argument("--concurrency", type=int, default=16, help="clients, each without pause")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--seed", type=int, default=0, help="of the request mix")
    parser.add_argument("--out", default="bench-results/soak")
    parser.add_argument("--port", type=int, default=8031)
    parser.add_argument("--upstream-port", type=int, default=8032)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
