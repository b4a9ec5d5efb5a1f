"""Prometheus metrics: every family defined once, on one registry per app (never the global one).

``GET /metrics`` serves them in the text format 0.0.4. All names start with ``loragate_``:

requests_total{tenant,department,adapter,status}        chat requests by HTTP status ("200", "401", ...);
                                                        a stream counts "200" once it started
errors_total{tenant,department,adapter,type}            by the error envelope's ``type``, mid-stream too
rate_limited_total{tenant}                              the rate limiter's 429s (none yet): ``rate_limited``
request_duration_seconds{tenant,department,adapter}     end to end, until the last byte (or a disconnect)
time_to_first_token_seconds{...}                        until the first content the client sees
inter_token_latency_seconds{...}                        gaps between one choice's content deltas
queue_time_seconds{...}                                 submission to the engine -> admission to its batch
prompt_tokens_total / completion_tokens_total{...}      as in the responses' usage
requests_in_flight{tenant,department}                   chat requests being served now
engine_batch_size, engine_queue_depth                   the engine's running / waiting, read at scrape
adapter_loads_total, adapter_evictions_total{adapter}   the embedded engine's LoRA slots
adapter_load_seconds{adapter}                           time to load one adapter
template_reloads_total{template}                        L1 template files loaded (the first load included)
template_failures_total{template}                       template versions refused, renders that failed
replica_up{replica}                                     vLLM replicas up 1/0, from the backend's health checks
replica_failures_total{replica,reason}                  failed checks of / requests to a vLLM replica, by kind
                                                        (unreachable, tls, timeout, unauthorized, ...; ``dns``
                                                        with the upstream's host:port when a lookup fails)
gpu_*                                                   NVML, sampled at scrape time (see gpu.py)
build_info{version,engine,model}                        always 1

Plus ``process_*`` and ``python_info`` from prometheus-client's process and platform collectors.

Label values come from configuration only, so that clients cannot grow the number of series:
``tenant`` and ``department`` are names from the tenants file, ``adapter`` is a registry ref
(``name@version``) or ``base`` for the base model, ``template`` a template name from the tenants
file. A request that fails before it has a route (401, malformed JSON, unknown department or model)
is labelled ``unknown`` for tenant, department and adapter when it is not authenticated, and with the
key's tenant and ``unknown`` department and adapter when it is. A value the client sent (a header,
a model name) is never a label value.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics import disable_created_metrics
from prometheus_client.registry import Collector
from starlette.types import Scope

from .domain import Delta
from .engines.base import EngineEvents, ServedDelta

if TYPE_CHECKING:
    from .accounting import Facts

UNKNOWN = "unknown"
BASE = "base"  # the adapter label when the base model serves
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 7.5, 10, 15, 20, 30, 60, 120, 300)
INTER_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
ROUTE = ("tenant", "department", "adapter")
_ERROR_TYPE = re.compile(r"[a-z_]{1,40}")  # envelope types are ours; anything else reads "unknown"
_SCOPE_KEY = "metrics"


class Metrics(EngineEvents):
    """The families of one app, and the events engines and templates report to it."""

    def __init__(self, gpu: Collector | None = None):
        # no *_created series: they double the series and dashboards skip them
        disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
        self.registry = r = CollectorRegistry()

        def counter(name: str, doc: str, labels: Sequence[str] = ROUTE) -> Counter:
            return Counter(f"loragate_{name}", doc, labels, registry=r)

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(f"loragate_{name}", doc, labels, registry=r)

        def histogram(
            name: str, doc: str, buckets: Sequence[float] = LATENCY_BUCKETS, labels: Sequence[str] = ROUTE
        ) -> Histogram:
            return Histogram(f"loragate_{name}", doc, labels, buckets=buckets, registry=r)

        self.requests = counter("requests", "Chat requests by status code.", [*ROUTE, "status"])
        self.errors = counter("errors", "Errors by the envelope's type.", [*ROUTE, "type"])
        self.limited = counter("rate_limited", "Requests refused by the rate limiter.", ["tenant"])
        self.duration = histogram("request_duration_seconds", "End-to-end latency.")
        self.ttft = histogram("time_to_first_token_seconds", "Time to the first content.")
        self.inter_token = histogram(
            "inter_token_latency_seconds", "Gaps between one choice's content deltas.", INTER_TOKEN_BUCKETS
        )
        self.queue_time = histogram("queue_time_seconds", "Wait from the engine's queue to its batch.")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens, as in the usage.")
        self.completion_tokens = counter("completion_tokens", "Completion tokens, as in the usage.")
        self.in_flight = gauge("requests_in_flight", "Chat requests being served.", ["tenant", "department"])
        self.batch_size = gauge("engine_batch_size", "Sequences the engine decodes now.")
        self.queue_depth = gauge("engine_queue_depth", "Requests waiting for the engine.")
        self.adapter_loads = counter("adapter_loads", "Adapter loads.", ["adapter"])
        self.adapter_evictions = counter("adapter_evictions", "Adapter evictions.", ["adapter"])
        self.adapter_load_seconds = histogram(
            "adapter_load_seconds", "Time to load an adapter.", LOAD_BUCKETS, ["adapter"]
        )
        self.template_reloads = counter("template_reloads", "Template files loaded.", ["template"])
        self.template_failures = counter(
            "template_failures", "Template versions refused, renders failed.", ["template"]
        )
        self.replica_up = gauge("replica_up", "Whether a vLLM replica answers (1/0).", ["replica"])
        self.replica_failures = counter(
            "replica_failures", "Failed checks of, or requests to, a vLLM replica.", ["replica", "reason"]
        )
        self.build = gauge("build_info", "Always 1.", ["version", "engine", "model"])
        self._series: dict[tuple[str, str, str], Series] = {}
        self._in_flight: dict[tuple[str, str], Any] = {}
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        if gpu is not None:
            r.register(gpu)

    def request(self) -> RequestMetrics:
        return RequestMetrics(self)

    def series(self, labels: tuple[str, str, str]) -> Series:
        """One route's children; ``labels()`` costs a lock and a validation, so each route's are kept."""
        found = self._series.get(labels)
        if found is None:
            found = self._series[labels] = Series(labels)
        return found

    def in_flight_of(self, tenant: str, department: str) -> Any:
        found = self._in_flight.get((tenant, department))
        if found is None:
            found = self._in_flight[(tenant, department)] = self.in_flight.labels(tenant, department)
        return found

    def build_info(self, version: str, engine: str, model: str) -> None:
        self.build.clear()
        self.build.labels(version, engine, model).set(1)

    def engine_load(self, extra: Mapping[str, object]) -> None:
        """The engine's ``health().extra``: ``running`` sequences and ``waiting`` requests (0 when absent)."""
        self.batch_size.set(_number(extra.get("running")))
        self.queue_depth.set(_number(extra.get("waiting")))

    # -- events: engines (any thread) and the template store ---------------------
    def adapter_loaded(self, name: str, seconds: float) -> None:
        self.adapter_loads.labels(name).inc()
        self.adapter_load_seconds.labels(name).observe(seconds)

    def adapter_evicted(self, name: str) -> None:
        self.adapter_evictions.labels(name).inc()

    def replica_health(self, replica: str, up: bool) -> None:
        self.replica_up.labels(replica).set(1 if up else 0)

    def replica_failed(self, replica: str, kind: str) -> None:
        self.replica_failures.labels(replica, kind).inc()

    def replica_left(self, replica: str) -> None:
        """Discovery dropped it: its series go, so that pods coming and going do not pile them up."""
        self.replica_up.remove_by_labels({"replica": replica})
        self.replica_failures.remove_by_labels({"replica": replica})

    def template_loaded(self, name: str) -> None:
        self.template_reloads.labels(name).inc()

    def template_failed(self, name: str) -> None:
        self.template_failures.labels(name).inc()

    def rate_limited(self, tenant: str) -> None:
        """For the rate limiter, when there is one: a tenant's request refused with 429."""
        self.limited.labels(tenant).inc()


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class Series:
    """The children of the per-route families for one (tenant, department, adapter).

    Each is made on first use: a child exists (and is exported) once something was recorded in it.
    """

    def __init__(self, labels: tuple[str, str, str]):
        self.labels = labels
        self._children: dict[tuple[Any, str], Any] = {}

    def __call__(self, family: Any, extra: str = "") -> Any:
        """``family.labels(*labels)``, or with ``extra`` as the last label (a request's status)."""
        found = self._children.get((family, extra))
        if found is None:
            labels = (*self.labels, extra) if extra else self.labels
            found = self._children[(family, extra)] = family.labels(*labels)
        return found


class RequestMetrics:
    """One chat request, from its first byte to its last (see ``MetricsMiddleware``).

    Labels start as ``unknown`` and become the tenant's (``authenticated``) and the route's
    (``routed``); the chat service reports each engine delta (``delta``) and mid-stream
    errors (``fail``); ``close`` records the status and the duration, once.
    """

    def __init__(self, metrics: Metrics):
        self._m = metrics
        self._start = time.perf_counter()
        self.labels: tuple[str, str, str] = (UNKNOWN, UNKNOWN, UNKNOWN)
        self._series: Series | None = None  # for self.labels, looked up when first needed
        self._first: float | None = None  # when the first content arrived
        self._last: dict[int, float] = {}  # choice -> when its last content delta arrived
        self._queued = self._prompted = self._closed = False
        self.prompt_tokens = self.completion_tokens = 0  # totals, for the ledger and the limits
        self.failure: str | None = None  # the error type of a failure after the answer began
        self.facts: Facts | None = None  # what the ledger needs besides (service/accounting.py)
        self._in_flight = metrics.in_flight_of(UNKNOWN, UNKNOWN)
        self._in_flight.inc()

    def authenticated(self, tenant: str, key_id: str | None = None) -> None:
        self._relabel((tenant, UNKNOWN, UNKNOWN))
        if self.facts is not None:
            self.facts.key_id = key_id

    def asked(self, model: str) -> None:
        """The model the request named (for the ledger)."""
        if self.facts is not None:
            self.facts.model = model

    def routed(self, tenant: str, department: str, adapter: str | None) -> None:
        self._relabel((tenant, department, adapter or BASE))

    def _relabel(self, labels: tuple[str, str, str]) -> None:
        if not self._closed and labels[:2] != self.labels[:2]:
            self._in_flight.dec()
            self._in_flight = self._m.in_flight_of(labels[0], labels[1])
            self._in_flight.inc()
        if labels != self.labels:
            self.labels, self._series = labels, None

    @property
    def series(self) -> Series:
        if self._series is None:
            self._series = self._m.series(self.labels)
        return self._series

    def delta(self, delta: Delta) -> None:
        now, m, series = time.perf_counter(), self._m, self.series
        if delta.queue_seconds is not None and not self._queued:
            self._queued = True
            series(m.queue_time).observe(delta.queue_seconds)
        if self._first is None and (delta.text or delta.tool_calls or delta.finish_reason is not None):
            self._first = now
            series(m.ttft).observe(now - self._start)
        if delta.text:
            facts = self.facts
            if facts is not None and facts.completion_parts is not None:  # the tenant keeps its text
                facts.completion_parts.append(delta.text)
            last = self._last.get(delta.index)
            if last is not None:
                series(m.inter_token).observe(now - last)
            self._last[delta.index] = now
        if delta.finish_reason is not None:
            if not self._prompted:  # the choices share one prompt, counted once as in the usage
                self._prompted = True
                self.prompt(delta.prompt_tokens)
            self.completion_tokens += delta.completion_tokens
            series(m.completion_tokens).inc(delta.completion_tokens)
            if isinstance(delta, ServedDelta) and self.facts is not None:  # a remote replica served it
                self.facts.replica = delta.replica

    def prompt(self, tokens: int) -> None:
        """Prompt tokens read (once per prompt: a completions list or embeddings have several)."""
        self.prompt_tokens += tokens
        self.series(self._m.prompt_tokens).inc(tokens)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start

    @property
    def ttft_seconds(self) -> float | None:
        """From the request's first byte to its first content (None: none came)."""
        return None if self._first is None else self._first - self._start

    def fail(self, error_type: str) -> None:
        kind = error_type if _ERROR_TYPE.fullmatch(error_type) else UNKNOWN
        self.failure = kind
        self._m.errors.labels(*self.labels, kind).inc()

    def close(self, status: int, error_type: str | None = None) -> None:
        """The response is over (sent, failed or abandoned): record it, once."""
        if self._closed:
            return
        self._closed = True
        if error_type is not None:
            self.fail(error_type)
        m, series = self._m, self.series
        series(m.requests, str(status)).inc()
        series(m.duration).observe(time.perf_counter() - self._start)
        self._in_flight.dec()


def attach(scope: Scope, recorder: RequestMetrics) -> None:
    scope.setdefault("state", {})[_SCOPE_KEY] = recorder


def recorder_of(scope: Scope) -> RequestMetrics:
    """The request's recorder, put there by ``MetricsMiddleware`` for the chat path."""
    recorder: Any = scope.get("state", {}).get(_SCOPE_KEY)
    if not isinstance(recorder, RequestMetrics):
        raise RuntimeError("no RequestMetrics for this request: is MetricsMiddleware installed for its path?")
    return recorder
