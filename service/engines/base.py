"""The engine interface: the only thing the gateway knows about a backend.

An engine turns a chat request (messages after tenancy and L1 templates) into a
stream of :class:`Delta` events. It is deliberately small (five methods), so that the embedded
transformers engine, the vLLM backend and test fakes all fit behind it:

- ``start()``: begin loading or connecting, without waiting for it.
- ``stream(request)``: an async iterator of deltas for all ``n`` choices;
  closing the iterator early aborts the work behind it.
- ``ensure_adapter(name, path)``: make a registry adapter servable before a request
  names it in ``GenerationRequest.adapter`` (the path comes from the registry, never
  from a client).
- ``health()``: whether the engine can generate now.
- ``close()``: free everything.

Engines that have more to tell (adapter loads, replica health) also implement
:class:`ReportsEvents`; the gateway subscribes its metrics before ``start()``. An engine with
remote replicas says which one served a choice with a :class:`ServedDelta` as its finishing
delta, as it says the token counts there (the usage ledger's ``replica``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..domain import Delta, GenerationRequest


@dataclass(slots=True)
class ServedDelta(Delta):
    """A finishing delta that names the remote replica that served it (``host:port``)."""

    replica: str = ""


@dataclass(frozen=True, slots=True)
class EngineHealth:
    ready: bool
    detail: str = ""
    extra: dict[str, object] = field(default_factory=dict)  # "running", "waiting": sequences, requests


@runtime_checkable
class Engine(Protocol):
    """What every backend implements. ``model_name`` is the served base model."""

    model_name: str
    max_context: int

    async def start(self) -> None:
        """Begin loading or connecting; return at once (``health`` reports progress)."""

    def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]: ...

    async def ensure_adapter(self, name: str, path: Path) -> None: ...

    async def health(self) -> EngineHealth: ...

    async def close(self) -> None: ...


class EngineEvents:
    """What an engine reports as things happen, from any thread; this default ignores it all."""

    def adapter_loaded(self, name: str, seconds: float) -> None:
        """Adapter ``name`` (``name@version``) was loaded in ``seconds``."""

    def adapter_evicted(self, name: str) -> None:
        """Adapter ``name`` was unloaded to make room."""

    def replica_health(self, replica: str, up: bool) -> None:
        """A remote replica (the vLLM backend) answers or not."""

    def replica_failed(self, replica: str, kind: str) -> None:
        """A check of, or a request to, ``replica`` failed; ``kind`` is one of a fixed few (the
        vLLM backend's ``failures.KINDS``: unreachable, tls, timeout, unauthorized, ...)."""

    def replica_left(self, replica: str) -> None:
        """Upstream discovery dropped ``replica``: nothing more will be reported of it."""


@runtime_checkable
class ReportsEvents(Protocol):
    """An engine with events to report; ``subscribe`` comes before ``start()``."""

    def subscribe(self, events: EngineEvents) -> None: ...
