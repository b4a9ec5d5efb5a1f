"""Which vLLM replica serves a request: adapter affinity, else the least loaded.

A request for an adapter goes to a replica that already holds it, unless that
replica has more than ``affinity_slack`` requests in flight beyond the least busy
one; then it goes to the least busy replica (which loads the adapter). A request
for the base model goes to the least busy replica. Replicas that are down are
skipped, and so are those a request has already failed on.

The router only keeps the books (up/down, in-flight counts, adapters held in
least-recently-used order); talking to vLLM is ``vllm.py``'s job.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ...errors import EngineUnavailableError


@dataclass(eq=False)
class Replica:
    url: str  # base URL, without /v1
    up: bool = False
    missed_checks: int = 0  # health checks in a row that got no answer in time
    inflight: int = 0
    picks: int = 0  # breaks ties between equally busy replicas, round-robin
    base_model: str | None = None  # the name vLLM serves the base model under
    max_model_len: int = 0
    gauges: dict[str, int] = field(default_factory=dict)  # vLLM's running/waiting counts, as last read
    adapters: OrderedDict[str, None] = field(default_factory=OrderedDict)  # held; least recent first
    users: Counter[str] = field(default_factory=Counter)  # in-flight requests per adapter
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)  # one load at a time per adapter

    @property
    def name(self) -> str:
        """``host:port``: the replica's label in metrics and logs."""
        return urlsplit(self.url).netloc or self.url

    def holds(self, adapter: str) -> bool:
        return adapter in self.adapters

    def touch(self, adapter: str) -> None:
        self.adapters.move_to_end(adapter)

    def lock(self, adapter: str) -> asyncio.Lock:
        return self.locks.setdefault(adapter, asyncio.Lock())

    def evictable(self) -> Iterator[str]:
        """Held adapters no request is using, least recently used first."""
        return (name for name in self.adapters if self.users[name] == 0)

    @contextmanager
    def serving(self, adapter: str | None) -> Iterator[None]:
        """Count a request in flight here (and its adapter in use) for as long as it runs."""
        self.inflight += 1
        if adapter is not None:
            self.users[adapter] += 1
        try:
            yield
        finally:
            self.inflight -= 1
            if adapter is not None:
                self.users[adapter] -= 1


class Router:
    def __init__(self, replicas: Sequence[Replica], affinity_slack: int = 4):
        if not replicas:
            raise ValueError("the vLLM backend needs at least one replica")
        self.replicas = list(replicas)
        self.affinity_slack = affinity_slack

    def up(self) -> list[Replica]:
        return [r for r in self.replicas if r.up]

    def pick(self, adapter: str | None, exclude: Sequence[Replica] = ()) -> Replica:
        """The replica for the next request; raises 503 when none is up (or all were tried)."""
        candidates = [r for r in self.replicas if r.up and r not in exclude]
        if not candidates:
            raise EngineUnavailableError("No vLLM replica is available right now; retry shortly.")

        def busy(r: Replica) -> tuple[int, int]:
            return r.inflight, r.picks

        chosen = least = min(candidates, key=busy)
        if adapter is not None:
            holders = [r for r in candidates if r.holds(adapter)]
            if holders:
                best = min(holders, key=busy)
                if best.inflight <= least.inflight + self.affinity_slack:
                    chosen = best
        chosen.picks += 1
        return chosen
