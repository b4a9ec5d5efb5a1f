"""``make bench``'s probe against real vLLM on the tiny model runs end to end.

CI does not run ``make bench``; this catches a probe that no longer starts its vLLM, its
gateway or its relay, or that no longer measures both sides of each pair.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from loadtests.bench_vllm import parse_args
from loadtests.bench_vllm_probe import probe_tiny_vllm, report_tiny
from tests.conftest import free_port

pytestmark = pytest.mark.vllm


def test_the_probe_measures_the_gateway_and_the_bare_relay(tmp_path: Path, smollm2_dir: Path) -> None:
    cpus = os.sched_getaffinity(0)
    args = parse_args(
        ["--probe-pairs", "8", "--vllm-port", str(free_port()), "--gateway-port", str(free_port())]
        + ["--floor-port", str(free_port())]
    )
    probes = probe_tiny_vllm(args, tmp_path, smollm2_dir)
    assert set(probes) == {"gateway", "floor"}
    for runs in probes.values():
        assert len(runs) == (2 if len(os.sched_getaffinity(0)) >= 2 else 1)  # cores shared, own core
        for probe in runs:
            figures = probe.report("probe")
            assert figures["pairs"] == 8
            assert figures["p50_low_ms"] <= figures["p50_ms"] <= figures["p50_high_ms"]
            assert all(math.isfinite(added) and abs(added) < 5.0 for added in probe.added)
            assert sum(probe.gateway_cpu_ms) > 0.1  # ms per request: the relay's process did the work
    assert report_tiny(probes)["vllm_gateway"]["pairs"] == 8
    assert os.sched_getaffinity(0) == cpus  # the probe gave this process its CPUs back
