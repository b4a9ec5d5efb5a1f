"""What the gateway adds in front of real vLLM, resolved: the paired probe on a tiny model.

Part of ``make bench`` (``loadtests/bench_vllm.py``). On a CPU host a one-token request to vLLM
serving SmolLM2 is mostly matrix products, whose time varies from one request to the next by
far more than the 2 ms target: no affordable number of pairs resolves 2 ms in that noise. vLLM
serving a 2-layer random Llama of hidden size 64 (``testkit/tiny_llama.py``, with SmolLM2's
tokenizer and chat template) spends next to nothing on them, as a GPU would. A one-token
request is then vLLM's own serving path (HTTP, tokenizer, scheduler, detokenizer), steady
enough for the probe to resolve 2 ms. The gateway and a bare relay (``floor_relay``) are
probed against it in turns, in blocks, and each figure is printed with its 95% interval: first
as the processes fall on the host's cores, then each relay on a core of its own, with vLLM and
the probe's client on the others (``own_core``), as in production, where the gateway shares no
cores with them. The latest figures, and the noise they are measured against: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from contextlib import nullcontext
from pathlib import Path

import httpx
from tqdm import tqdm

from loadtests.common import DEPARTMENTS, TARGET_MS, Target, one, paired_probe, targets
from loadtests.probe import Probe, own_core, session_pids, verdict
from loadtests.servers import build_world, start_floor, start_gateway, stop
from loadtests.vllm_server import start_cpu_vllm
from testkit.tiny_llama import write_tiny_llama

TINY = "tiny-random-llama"


def probe_tiny_vllm(args: argparse.Namespace, root: Path, tokenizer_dir: Path) -> dict[str, list[Probe]]:
    """``{"gateway": probes, "floor": probes}`` against one vLLM serving the tiny model: cores
    shared, then (on hosts of two CPUs or more) on a core of its own."""
    world = root / "tiny"
    world.mkdir()
    model_dir = write_tiny_llama(world / "model", tokenizer_dir, heads=2, kv_heads=1, std=0.3, positions=2048)
    key = build_world(world, model_dir, served=TINY)
    vllm = start_cpu_vllm(
        model_dir, TINY, args.vllm_port, root / "vllm-tiny.log", max_lora_rank=8, max_num_seqs=32
    )
    processes = []
    try:
        engine = ["--engine", "vllm", "--upstream", vllm.url]
        gateway = start_gateway(world, args.gateway_port, engine, model_dir, root / "gateway-tiny.log", TINY)
        processes.append(gateway)
        via, direct = targets(args.gateway_port, vllm.url, key, TINY)
        asyncio.run(_load_adapters(via))  # vLLM holds them from here on: direct requests find them
        relay, floor = start_floor(args.floor_port, vllm.url, direct.models, root / "floor-tiny.log")
        processes.append(relay)
        relays = {"gateway": (via, gateway.pid), "floor": (floor, relay.pid)}
        for target, pid in relays.values():  # warm-up: connection pools, caches
            asyncio.run(paired_probe(target, direct, 30, pid, tqdm(disable=True)))
        shared = probes_in_turns(relays, direct, args.probe_pairs)
        if len(os.sched_getaffinity(0)) < 2:
            return {name: [probe] for name, probe in shared.items()}
        assert vllm.process is not None
        pinned = probes_in_turns(relays, direct, args.probe_pairs, session_pids(vllm.process.pid))
        return {name: [shared[name], pinned[name]] for name in relays}
    finally:
        for process in reversed(processes):
            stop(process)
        vllm.stop()


def report_tiny(probes: dict[str, list[Probe]]) -> dict[str, object]:
    """Print the probes' figures, each of the gateway's with its verdict on the target; return them."""
    figures: dict[str, object] = {}
    titles = ("cores shared", "on a core of its own, vLLM and the probe's client on the others")
    print("paired probe against vLLM serving a tiny model, one-token requests one at a time:")
    for title, probe, suffix in zip(titles, probes["gateway"], ("", "_own_core"), strict=False):
        figures[f"vllm_gateway{suffix}"] = shown = probe.report(f"  gateway, {title}")
        outcome = verdict(shown["p50_low_ms"], shown["p50_high_ms"], TARGET_MS)
        print(f"    target p50 < {TARGET_MS:g} ms: {outcome}")
    print("  for scale, a bare relay (loadtests/floor_relay.py) in front of the same vLLM, in turns:")
    for title, probe, suffix in zip(titles, probes["floor"], ("", "_own_core"), strict=False):
        figures[f"vllm_floor_relay{suffix}"] = probe.report(f"    bare relay, {title}")
    return figures


async def _load_adapters(via: Target) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        for department in DEPARTMENTS:
            await one(client, via, department, "Hello", 1)


def probes_in_turns(
    relays: dict[str, tuple[Target, int]],
    direct: Target,
    pairs: int,
    upstream_pids: list[int] | None = None,
    turns: int = 4,
) -> dict[str, Probe]:
    """Each relay's paired probe in ``turns`` blocks, taking turns: vLLM's speed drifts over minutes
    on a shared host, and a block of one relay after all of the other's would take the drift as cost.

    With ``upstream_pids``, each block runs with its relay on a core of its own (``own_core``).
    """
    block = max(1, pairs // turns)
    blocks: dict[str, list[Probe]] = {name: [] for name in relays}
    desc = "paired probe, tiny model" + (", own core" if upstream_pids else "")
    with tqdm(total=block * turns * len(relays), desc=desc, unit="pair") as bar:
        for _ in range(turns):
            for name, (target, pid) in relays.items():
                with own_core(pid, *upstream_pids) if upstream_pids else nullcontext():
                    blocks[name].append(asyncio.run(paired_probe(target, direct, block, pid, bar)))
    return {name: Probe.merged(probes) for name, probes in blocks.items()}
