"""The paired probe's figures: what the gateway added per request, and CPU time per request from /proc."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


@dataclass
class Probe:
    added: list[float]  # seconds the gateway added, pair by pair
    gateway_cpu_ms: tuple[float, float]  # the gateway's user and system CPU per request it served
    upstream_cpu_ms: tuple[float, float] | None  # the same for the upstream, when it is a stand-in

    @classmethod
    def merged(cls, probes: list[Probe]) -> Probe:
        """Blocks of one probe as one: all their pairs, CPU figures averaged over equal blocks."""

        def mean(values: list[tuple[float, float]]) -> tuple[float, float]:
            return sum(v[0] for v in values) / len(values), sum(v[1] for v in values) / len(values)

        upstream = [p.upstream_cpu_ms for p in probes if p.upstream_cpu_ms]
        return cls(
            [added for p in probes for added in p.added],
            mean([p.gateway_cpu_ms for p in probes]),
            mean(upstream) if upstream else None,
        )

    def report(self, title: str) -> dict[str, float]:
        """Print the figures under ``title`` and return them."""
        user, system = self.gateway_cpu_ms
        figures = {
            "pairs": len(self.added),
            "p50_ms": 1000 * percentile(self.added, 50),
            "p99_ms": 1000 * percentile(self.added, 99),
            "gateway_cpu_ms_per_request": user + system,
            "gateway_user_cpu_ms_per_request": user,
        }
        print(
            f"{title}: adds p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms "
            f"({len(self.added)} pairs); its CPU {user + system:.2f} ms per request "
            f"({user:.2f} user, {system:.2f} system)"
        )
        if self.upstream_cpu_ms:
            up_user, up_system = self.upstream_cpu_ms
            figures["upstream_cpu_ms_per_request"] = up_user + up_system
            print(
                f"  for scale, the stand-in upstream (a bare Starlette app) uses "
                f"{up_user + up_system:.2f} ms of CPU per request "
                f"({up_user:.2f} user, {up_system:.2f} system)"
            )
        return figures


def per_request_ms(pid: int, before: tuple[float, float], requests: int) -> tuple[float, float]:
    user, system = cpu_seconds(pid)
    return 1000 * (user - before[0]) / requests, 1000 * (system - before[1]) / requests


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@contextmanager
def own_core(gateway_pid: int, *others: int) -> Iterator[None]:
    """The gateway's threads on the last CPU; this process and ``others`` on the rest.

    As in production, where the gateway does not share its cores with the load generator
    and the model server: on a small host, without this, the probe also measures how
    often they preempt the gateway. This process's own CPUs are restored after.
    """
    cpus = sorted(os.sched_getaffinity(0))
    mine = set(cpus)
    for pid in others:
        _pin(pid, set(cpus[:-1]))
    _pin(gateway_pid, {cpus[-1]})
    os.sched_setaffinity(0, set(cpus[:-1]))
    try:
        yield
    finally:
        os.sched_setaffinity(0, mine)


def _pin(pid: int, cpus: set[int]) -> None:
    for thread in os.listdir(f"/proc/{pid}/task"):  # every thread: the affinity of one is its own
        os.sched_setaffinity(int(thread), cpus)
