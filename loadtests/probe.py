"""The paired probe's figures: what the gateway added per request, and its CPU time per request."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuTime:
    """A process's CPU time so far, all its threads, live and ended (Linux)."""

    total: float  # seconds, from the process's CPU clock: nanoseconds
    user: float  # seconds, from /proc in clock ticks (10 ms): only good for the split
    system: float


def cpu_seconds(pid: int) -> CpuTime:
    """The CPU time of process ``pid`` so far."""
    total = time.clock_gettime((~pid << 3) | 2)  # the kernel's CPU clock id of a whole process
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return CpuTime(total, int(fields[11]) / tick, int(fields[12]) / tick)


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
        low, high = median_interval(self.added)
        figures = {
            "pairs": len(self.added),
            "p50_ms": 1000 * percentile(self.added, 50),
            "p50_low_ms": 1000 * low,
            "p50_high_ms": 1000 * high,
            "p99_ms": 1000 * percentile(self.added, 99),
            "gateway_cpu_ms_per_request": user + system,
            "gateway_user_cpu_ms_per_request": user,
        }
        print(
            f"{title}: adds p50 {figures['p50_ms']:.2f} ms (95% interval {1000 * low:.2f} to "
            f"{1000 * high:.2f} ms), p99 {figures['p99_ms']:.2f} ms "
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


def per_request_ms(pid: int, before: CpuTime, requests: int) -> tuple[float, float]:
    """User and system CPU per request since ``before``.

    The total is exact. A few requests take less than the 10 ms tick that /proc counts user and
    system time in, so it is split between them in the proportion of the ticks counted meanwhile,
    or over the process's life when none were.
    """
    after = cpu_seconds(pid)
    user, system = after.user - before.user, after.system - before.system
    if user + system <= 0:
        user, system = after.user, after.system
    share = user / (user + system) if user + system > 0 else 1.0
    total = 1000 * (after.total - before.total) / requests
    return total * share, total * (1 - share)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def median_interval(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """A ~95% interval for the median of ``values``, from their order statistics alone.

    The count of values under the true median is binomial(n, 1/2), so the median lies between
    the order statistics ranked (n - z*sqrt(n))/2 and 1 + (n + z*sqrt(n))/2 (1-based) with
    probability ~95%, whatever the distribution: vLLM's one-token latency has long tails.
    """
    ordered = sorted(values)
    n = len(ordered)
    spread = z * math.sqrt(n)
    low = math.floor((n - spread) / 2)
    high = math.ceil(1 + (n + spread) / 2)
    return ordered[max(0, low - 1)], ordered[min(n - 1, high - 1)]


def verdict(low_ms: float, high_ms: float, target_ms: float) -> str:
    """Whether a run shows the median under ``target_ms``: met, missed, or not resolved."""
    if high_ms < target_ms:
        return f"met: the whole interval is under {target_ms:g} ms"
    if low_ms >= target_ms:
        return f"missed: the whole interval is at or over {target_ms:g} ms"
    return f"not resolved by this run: the interval spans {target_ms:g} ms"


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


def session_pids(session: int) -> list[int]:
    """Every process of a session (Linux): a server started with ``start_new_session`` and its children."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[3]) == session:
                pids.append(int(entry))
    return pids


def _pin(pid: int, cpus: set[int]) -> None:
    for thread in os.listdir(f"/proc/{pid}/task"):  # every thread: the affinity of one is its own
        os.sched_setaffinity(int(thread), cpus)
