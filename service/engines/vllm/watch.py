"""Keeping the router's books true: replica health, vLLM's load gauges, and upstream discovery.

- Health: every ``health_interval`` seconds each replica's ``/health``; a replica that comes
  (back) up has its ``/v1/models`` read (its base model, context length and adapters: a restarted
  vLLM holds none), which is also where a wrong or missing upstream key shows (401). Refused
  connections, TLS failures and refusals take a replica out at once; slow answers only
  ``MISSES_TO_DOWN`` times in a row (a busy vLLM can take seconds to answer).
- Every change of a replica's state, and every new reason while it is down, is logged at WARNING
  with the reason (INFO when it comes up), once, not per check or request; ``/ready`` shows each
  replica's state and reason, and the metrics count each failure by kind (``failures.py``).
- vLLM's running/waiting counts are read from each replica's /metrics in the background, beside
  the checks: a vLLM that streams on a loaded host can take many seconds to answer /metrics, and
  neither ``/ready`` nor a scrape of the gateway's /metrics may wait for it.
- Discovery (``discovery.py``): every ``resolve_interval`` seconds each named upstream is looked up;
  new addresses join (checked at once), gone ones leave (requests on them finish).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from ..base import EngineEvents
from .discovery import Resolver, Target, lookup
from .failures import ReplicaRefused, classify, refusal
from .hop import Hop
from .routing import Replica, Router

log = logging.getLogger(__name__)

_GAUGES = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting"}
MISSES_TO_DOWN = 3  # health checks in a row without an answer in time before a replica is taken out
HEALTH_TIMEOUT = 2.0  # /health: an answer later than this is a missed check
GAUGES_TIMEOUT = 30.0  # vLLM's /metrics, read in the background: late is better than nothing
_UNREADABLE = (ValueError, KeyError, TypeError, AttributeError)  # a /v1/models answer that is not vLLM's


class Watch:
    def __init__(
        self,
        router: Router,
        hop: Hop,
        adapters: Mapping[str, Path],
        learnt_context: Callable[[int], None],
        *,
        targets: Sequence[Target] = (),
        resolver: Resolver,
        health_interval: float = 2.0,
        health_timeout: float = HEALTH_TIMEOUT,
        resolve_interval: float = 10.0,
    ):
        self.router, self.hop, self.targets = router, hop, list(targets)
        self.events = EngineEvents()
        self._adapters = adapters  # registered adapters: those a replica lists are counted as held
        self._learnt_context = learnt_context
        self._resolver = resolver
        self._health_interval, self._resolve_interval = health_interval, resolve_interval
        self._health_timeout = health_timeout
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._health_loop(), name="loragate-vllm-health"))
        if self.targets:
            self._tasks.append(asyncio.create_task(self._discovery_loop(), name="loragate-vllm-discovery"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- state changes: logged once, reported as events ------------------------------
    def mark_up(self, replica: Replica) -> None:
        if replica.up:
            return
        replica.up, replica.failure, replica.reason = True, "", ""
        if not replica.left:
            log.info("vLLM replica %s (%s) is up", replica.name, replica.url)
            self.events.replica_health(replica.name, True)

    def mark_down(self, replica: Replica, kind: str, reason: str) -> None:
        """A failure of ``kind``: counted every time, logged when the state or the kind changes."""
        changed = replica.up or kind != replica.failure
        replica.up, replica.failure, replica.reason = False, kind, reason
        if replica.left:
            return
        self.events.replica_failed(replica.name, kind)
        if changed:
            log.warning("vLLM replica %s (%s) is DOWN: %s", replica.name, replica.url, reason)
            self.events.replica_health(replica.name, False)

    # -- health --------------------------------------------------------------------
    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(r) for r in list(self.router.replicas)))

    async def check(self, replica: Replica) -> None:
        try:
            status, _ = await self.hop.get(replica, "/health", self._health_timeout)
            if status != 200:
                raise refusal(status, "/health", self.hop.has_key)
            if not replica.up:
                await self._sync(replica)
            replica.missed_checks = 0
            self.mark_up(replica)
        except httpx.TimeoutException as exc:
            replica.missed_checks += 1
            log.debug(
                "replica %s: no answer in time (%d in a row): %s", replica.name, replica.missed_checks, exc
            )
            if not replica.up or replica.missed_checks >= MISSES_TO_DOWN:
                self.mark_down(replica, *classify(exc))
            else:
                self.events.replica_failed(replica.name, "timeout")
        except (httpx.HTTPError, ReplicaRefused, *_UNREADABLE) as exc:
            self.mark_down(replica, *classify(exc))

    async def _sync(self, replica: Replica) -> None:
        """Read what a replica (new, or back from the dead) serves: its base model and adapters."""
        status, body = await self.hop.get(replica, "/v1/models", 5.0)
        if not 200 <= status < 300:
            raise refusal(status, "/v1/models", self.hop.has_key)
        models = json.loads(body)["data"]
        base = next((m for m in models if not m.get("parent")), None)
        if base is None:
            raise ValueError("/v1/models lists no base model")
        replica.base_model = base["id"]
        replica.max_model_len = int(base.get("max_model_len") or 0)
        replica.gauges = {}
        replica.adapters.clear()
        replica.adapters.update(
            (m["id"], None) for m in models if m.get("parent") and m["id"] in self._adapters
        )
        lengths = [r.max_model_len for r in self.router.replicas if r.max_model_len]
        self._learnt_context(min(lengths) if lengths else 0)

    async def _health_loop(self) -> None:
        gauges: asyncio.Task[None] | None = None
        try:
            while True:
                await self.check_all()
                if gauges is None or gauges.done():  # a slow /metrics holds up no health check
                    gauges = asyncio.create_task(self.read_gauges(), name="loragate-vllm-gauges")
                await asyncio.sleep(self._health_interval)
        finally:
            if gauges is not None:
                gauges.cancel()
                await asyncio.gather(gauges, return_exceptions=True)

    # -- vLLM's own load -------------------------------------------------------------
    async def read_gauges(self) -> None:
        await asyncio.gather(*(self._read_gauges(r) for r in self.router.up()))

    async def _read_gauges(self, replica: Replica) -> None:
        try:
            text = (await self.hop.get(replica, "/metrics", GAUGES_TIMEOUT))[1].decode(errors="replace")
        except httpx.HTTPError as exc:
            log.debug("replica %s: no /metrics (%s); counting the gateway's own requests", replica.name, exc)
            replica.gauges = {"running": replica.inflight}
            return
        counts = {"running": 0, "waiting": 0}
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in _GAUGES:
                counts[_GAUGES[name]] += int(float(line.rsplit(" ", 1)[1]))
        replica.gauges = counts

    # -- discovery -------------------------------------------------------------------
    async def discover(self) -> None:
        """One round: each named upstream looked up; new addresses join (checked at once), gone ones leave."""
        joined: list[Replica] = []
        for target in self.targets:
            before = target.error
            if not await lookup(target, self._resolver):
                if target.error != before:
                    log.warning("upstream discovery: %s; its replicas stay as they were", target.error)
                self.events.replica_failed(target.name, "dns")
                continue
            if before is not None:
                log.info("upstream discovery: %s resolves again", target.host)
            joined += self._follow(target)
        await asyncio.gather(*(self.check(r) for r in joined))

    def _follow(self, target: Target) -> list[Replica]:
        """The router's replicas for ``target`` made to match its addresses; the ones that joined."""
        held = {r.address: r for r in self.router.replicas if r.url == target.url and r.address is not None}
        joined = []
        for address in target.addresses:
            if address not in held:
                replica = Replica(target.url, address)
                self.router.add(replica)
                joined.append(replica)
                log.info("vLLM replica %s joined (%s resolves to it)", replica.name, target.host)
        for address, replica in held.items():
            if address not in target.addresses:
                self.router.remove(replica)
                log.info("vLLM replica %s left (%s no longer resolves to it)", replica.name, target.host)
                self.events.replica_left(replica.name)
        return joined

    async def _discovery_loop(self) -> None:
        while True:
            await self.discover()
            await asyncio.sleep(self._resolve_interval)
