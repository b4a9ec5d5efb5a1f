"""The gateway's own cost: the paired probe with ``instant_upstream`` (answers at once) in vLLM's place.

Part of ``make bench`` (``loadtests/bench_vllm.py``). Whatever the gateway adds in front of an
upstream that does no work is the gateway's own. For scale, ``floor_relay`` (a bare relay with
none of the gateway's work) is probed the same way in the same run. Each is probed twice on
hosts with two CPUs or more: as the processes fall, then on a core of its own (``own_core``).
After the gateway's probes, ``bench_fairness`` checks that one fast stream does not hold up the rest.
Before them, ``bench_client`` sets the vLLM hop's HTTP client beside httpx's own. The latest
figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
from pathlib import Path

from tqdm import tqdm

from loadtests.bench_client import bench_client
from loadtests.bench_fairness import fairness
from loadtests.common import MODEL, Target, paired_probe, targets
from loadtests.probe import Probe, own_core
from loadtests.servers import spawn_module, start_floor, start_gateway, stop, wait_for


def bench_instant(
    args: argparse.Namespace, root: Path, model_dir: Path, key: str
) -> tuple[dict[str, list[Probe]], dict[str, float], dict[str, dict[str, float]]]:
    """``{"gateway": probes, "floor": probes}`` (unpinned first, then on a core of its own), the
    gateway's ``bench_fairness`` figures, and ``bench_client``'s."""
    upstream = f"http://127.0.0.1:{args.vllm_port}"
    processes: list[subprocess.Popen] = []
    try:
        stand_in = spawn_module(root / "instant.log", "loadtests.instant_upstream", str(args.vllm_port))
        processes.append(stand_in)
        wait_for(f"{upstream}/health", stand_in)
        client = bench_client(upstream)
        gateway_args = ["--engine", "vllm", "--upstream", upstream]
        gateway = start_gateway(
            root, args.gateway_port, gateway_args, model_dir, root / "gateway-instant.log"
        )
        processes.append(gateway)
        via, direct = targets(args.gateway_port, upstream, key, MODEL)
        probes = {"gateway": _probe(via, direct, gateway, stand_in, args.instant_pairs)}
        fair = fairness(via)
        stop(processes.pop())
        relay, floor = start_floor(args.gateway_port, upstream, direct.models, root / "floor.log")
        processes.append(relay)
        probes["floor"] = _probe(floor, direct, relay, stand_in, args.instant_pairs)
        return probes, fair, client
    finally:
        for process in reversed(processes):
            stop(process)


def _probe(
    via: Target, direct: Target, relay: subprocess.Popen, stand_in: subprocess.Popen, pairs: int
) -> list[Probe]:
    asyncio.run(paired_probe(via, direct, 30, relay.pid, tqdm(disable=True)))  # warm-up
    with tqdm(total=pairs, desc=f"{via.name}, instant upstream", unit="pair") as bar:
        probes = [asyncio.run(paired_probe(via, direct, pairs, relay.pid, bar, stand_in.pid))]
    if len(os.sched_getaffinity(0)) >= 2:
        with (
            own_core(relay.pid, stand_in.pid),
            tqdm(total=pairs, desc=f"{via.name}, own core", unit="pair") as bar,
        ):
            probes.append(asyncio.run(paired_probe(via, direct, pairs, relay.pid, bar, stand_in.pid)))
    return probes
