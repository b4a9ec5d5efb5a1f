"""Which vLLM replica serves a request: adapter affinity, else the least loaded.

A request for an adapter goes to a replica that already holds it, unless that
replica has more than ``affinity_slack`` requests in flight beyond the least busy
one; then it goes to the least busy replica (which loads the adapter). A request
for the base model goes to the least busy replica. Replicas that are down are
skipped, and so are those a request has already failed on.

The router only keeps the books (up/down and why, in-flight counts, adapters held in
least-recently-used order); talking to vLLM is ``engine.py``'s job. Replicas join and leave
(``add``, ``remove``: upstream discovery); a request that holds a replica that left finishes
on it, and what the replica held is forgotten with it.
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
    url: str  # base URL as configured, without /v1; its host is the Host header and TLS's server name
    address: str | None = None  # the IP discovery found for the URL's host name; None: dial the host
    up: bool = False
    reason: str = "not checked yet"  # why it is down (the last failure), for /ready and the logs
    failure: str = ""  # the kind of that failure (a metric's label), "" while up or never checked
    left: bool = False  # discovery dropped it: requests still on it finish, no event reports it
    missed_checks: int = 0  # health checks in a row that got no answer in time
    inflight: int = 0
    picks: int = 0  # breaks ties between equally busy replicas, round-robin
    base_model: str | None = None  # the name vLLM serves the base model under
    max_model_len: int = 0
    gauges: dict[str, int] = field(default_factory=dict)  # vLLM's running/waiting counts, as last read
    adapters: OrderedDict[str, None] = field(default_factory=OrderedDict)  # held; least recent first
    users: Counter[str] = field(default_factory=Counter)  # in-flight requests per adapter
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)  # one load at a time per adapter
    name: str = field(init=False)  # ``host:port`` (the address's, if any): metrics, logs, the ledger

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if self.address is None:
            self.name = parts.netloc or self.url
            return
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.name = f"[{self.address}]:{port}" if ":" in self.address else f"{self.address}:{port}"

    def status(self) -> dict[str, object]:
        """What ``/ready`` shows of it."""
        state: dict[str, object] = {
            "replica": self.name,
            "url": self.url,
            "state": "up" if self.up else "down",
        }
        if self.address is not None:
            state["address"] = self.address
        if not self.up:
            state["reason"] = self.reason
        return state

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
        self.replicas = list(replicas)  # may be empty until discovery finds some
        self.affinity_slack = affinity_slack

    def up(self) -> list[Replica]:
        return [r for r in self.replicas if r.up]

    def add(self, replica: Replica) -> None:
        self.replicas.append(replica)

    def remove(self, replica: Replica) -> None:
        """No new request goes to ``replica``; those on it finish. Its books (adapters) go with it."""
        replica.left = True
        self.replicas.remove(replica)

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
