"""Holding under load and faults: a bounded admission per engine, deadlines, the drain on shutdown.

Every generating request (chat, completions, embeddings) passes :meth:`Admission.enter` in the API
pipeline (``service/api/pipeline.py``) once it is authenticated and its body read and parsed, so
that a slow sender holds a connection (until ``body_timeout``), never a place in the queue:

- **Backpressure.** An engine holds at most what it runs at once plus ``max_queued_requests``
  generating requests; the next one gets a fast 429 (``overloaded_error``, code
  ``server_overloaded``, ``Retry-After: 1``) instead of a place in an unbounded queue. Chat and
  completions share the generating engine's count, embeddings (another model) have their own.
  What an engine runs at once: the embedded engine's ``max_batch_size``; for vLLM,
  ``VLLM_RUNNING`` per replica (vLLM's default ``--max-num-seqs``): the gateway counts its own
  requests in flight to the replicas rather than asking them. The count is an integer on the
  event loop: no lock, no await. A request counts as one, whatever its ``n`` or prompts.
- **Deadlines.** A request runs in a scope (``service/cancel.py``) whose deadline is
  ``request_timeout`` after its admission (planning, adapter loads, the limits, the engine and
  the relay of the answer included): the pipeline then ends it with 504, or, once a stream has
  begun, with an error event and ``[DONE]``; cancelling the work closes the engine's stream,
  which aborts it. The services wait at most ``first_token_timeout`` for the first delta
  (:func:`first_delta`): 504 as well.
- **Drain.** :meth:`Admission.drain` (``loragate serve``'s server calls it when it starts shutting
  down: ``service/http_server.py``) refuses new generating requests with 503 (code
  ``server_shutting_down``, ``Retry-After: 1``) and makes ``/ready`` answer 503. Answers in
  flight go on; ``shutdown_grace`` later, the scopes of those still running are cancelled: 503,
  or an error event and ``[DONE]`` for a stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .cancel import RequestScope
from .errors import GatewayTimeoutError, LoragateError, OverloadedError, ShuttingDownError

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
VLLM_RUNNING = 256  # sequences a vLLM replica runs at once by default (its --max-num-seqs)
EMBEDDINGS_RUNNING = 64  # requests an embedding model takes into one round (LocalEmbedder's rows)


@dataclass(slots=True)
class Gate:
    """One engine's generating requests in flight: at most ``limit``."""

    name: str
    limit: int
    count: int = 0


def engine_running(settings: Settings) -> int:
    """What the generating engine runs at once, as far as the gateway knows it."""
    if settings.engine == "local":
        return settings.max_batch_size
    replicas = 1 if settings.spawn else max(1, len(settings.upstream))
    return VLLM_RUNNING * replicas


class Admission:
    """The generating routes' gates (routes that share an engine share its gate), deadlines and drain."""

    def __init__(self, gates: Mapping[str, Gate], *, request_timeout: float, shutdown_grace: float):
        self._gates = dict(gates)
        self.request_timeout = request_timeout
        self.shutdown_grace = shutdown_grace
        self.draining = False  # no new generating request is admitted
        self.ended = False  # shutdown_grace ran out: what still runs was ended
        self._running: set[RequestScope] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> Admission:
        queued = settings.max_queued_requests
        engine = Gate("engine", engine_running(settings) + queued)
        gates = {
            "chat": engine,
            "completions": engine,
            "embeddings": Gate("embeddings", EMBEDDINGS_RUNNING + queued),
        }
        return cls(gates, request_timeout=settings.request_timeout, shutdown_grace=settings.shutdown_grace)

    def in_flight(self) -> dict[str, int]:
        """Generating requests in flight, per engine."""
        return {gate.name: gate.count for gate in self._gates.values()}

    def enter(self, route: str) -> tuple[Gate, RequestScope]:
        """Admit a request of ``route``: its gate (to ``leave``) and the scope to run it in,
        whose deadline is ``request_timeout`` from now. 429 when the engine is full, 503 while draining.
        """
        if self.draining:
            raise ShuttingDownError("The server is shutting down; retry on another replica or shortly.")
        gate = self._gates[route]
        if gate.count >= gate.limit:
            raise OverloadedError("The server is overloaded with other requests; retry shortly.")
        gate.count += 1
        scope = RequestScope(asyncio.get_running_loop().time() + self.request_timeout)
        self._running.add(scope)
        return gate, scope

    def leave(self, gate: Gate, scope: RequestScope) -> None:
        gate.count -= 1
        self._running.discard(scope)

    def interrupted(self, scope: RequestScope) -> LoragateError:
        """Why ``scope`` (a request's, from ``enter``) was cancelled: the drain's end, or its deadline."""
        if scope.reason == "ended":
            return ShuttingDownError(
                f"The server is shutting down: this answer did not finish within the {self.shutdown_grace:g}"
                " seconds given to answers in flight (shutdown_grace). Retry it."
            )
        return GatewayTimeoutError(
            f"The request did not complete within {self.request_timeout:g} seconds (request_timeout)."
        )

    def drain(self) -> None:
        """From now, refuse new generating requests; after ``shutdown_grace``, end those still running.

        Called on the event loop. Idempotent.
        """
        if self.draining:
            return
        self.draining = True
        log.info(
            "draining: %d generating requests in flight get up to %g seconds to finish",
            len(self._running),
            self.shutdown_grace,
        )
        asyncio.get_running_loop().call_later(self.shutdown_grace, self._end)

    def _end(self) -> None:
        self.ended = True
        if self._running:
            log.warning("shutdown_grace is over: ending %d answers still in flight", len(self._running))
        for scope in list(self._running):
            scope.cancel("ended")


async def first_delta(deltas: AsyncIterator[T], timeout: float) -> T | None:
    """``anext(deltas, None)``, waiting at most ``timeout`` seconds (``first_token_timeout``): then 504.

    The caller closes ``deltas`` whatever happens, which aborts the engine's work.
    """
    limit = asyncio.timeout(timeout)
    try:
        async with limit:
            return await anext(deltas, None)
    except TimeoutError:
        if not limit.expired():
            raise  # the engine's own
    raise GatewayTimeoutError(f"No token was generated within {timeout:g} seconds (first_token_timeout).")
