"""The vLLM backend: one or more vLLM OpenAI servers (``vllm serve ... --enable-lora``) over HTTP.

- Every call to a replica goes through one ``UpstreamClient`` (``upstream.py``), and the backend
  never asks which it has: by default the gateway's own HTTP/1.1 client (``http1``: asyncio and
  httptools' C parser, no httpx Request or Response per call: a quarter of httpcore's CPU per
  request); ``HttpxUpstream`` over httpx's own pool, or over an ``httpx.MockTransport`` in the
  unit tests. Failures are httpx's exception classes either way. ``https://`` replicas are
  verified against ``ca_bundle`` (else the system's CAs), and every call carries ``api_key``
  (vLLM's ``--api-key``) as a Bearer token (``hop.py``).
- Requests go out as streamed chat completions (a raw ``prompt``: completions) with
  ``model`` = the adapter's name in vLLM (the registry ref, ``name@version``) or the base
  model; the SSE reply is relayed chunk by chunk (``wire.py``: tools, constraints as
  ``response_format``, logprobs). Closing the stream (the client left) closes the upstream
  response, and vLLM aborts the request. The finishing deltas name the replica that served
  (``ServedDelta``), for the usage ledger.
- Adapters are registered on a replica with ``/v1/load_lora_adapter`` from the
  registry's path just before the first request there that needs them (one load,
  however many requests wait for it), and unloaded when the replica holds more than
  ``max_loaded_adapters`` (least recently used first, never one in use).
- Replicas are chosen by ``routing.Router`` (affinity, else least loaded). ``watch.Watch`` checks
  their health, reads vLLM's load, and follows upstream host names to their addresses
  (discovery: each address a replica). A connection failure before the first byte, or a 401,
  takes the replica out and is retried on another one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

import httpx
from pydantic import SecretStr

from ...domain import Delta, GenerationRequest
from ...errors import AdapterLoadError, ModelNotFoundError, UpstreamError
from ..base import EngineEvents, EngineHealth
from .discovery import Resolver, Target, is_ip_literal, system_resolver
from .failures import ReplicaRefused, classify, refusal
from .hop import Hop
from .http1 import Http1Transport
from .routing import Replica, Router
from .spawn import VllmSupervisor
from .upstream import UpstreamClient, UpstreamReply, tls_context
from .watch import HEALTH_TIMEOUT, MISSES_TO_DOWN, Watch
from .wire import ChunkReader, CompletionReader, data_lines, error_message, request_body, request_error

__all__ = ["HEALTH_TIMEOUT", "MISSES_TO_DOWN", "VllmEngine"]

log = logging.getLogger(__name__)

_RETRYABLE = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.PoolTimeout,
    ReplicaRefused,  # 401/403: the key; nothing was processed
)


class VllmEngine:
    def __init__(
        self,
        upstreams: Sequence[str],
        *,
        model_name: str,
        max_loaded_adapters: int = 8,
        affinity_slack: int = 4,
        connect_timeout: float = 5.0,
        read_timeout: float = 300.0,
        health_interval: float = 2.0,
        max_connections: int = 1024,
        api_key: SecretStr | str | None = None,
        ca_bundle: Path | None = None,
        resolve_interval: float = 10.0,
        resolver: Resolver = system_resolver,
        client: UpstreamClient | None = None,
        supervisor: VllmSupervisor | None = None,
    ):
        """``upstreams``: base URLs; one whose host is a DNS name is looked up every
        ``resolve_interval`` seconds, each address a replica (``discovery.py``)."""
        self.model_name = model_name
        self.max_context = 0  # learnt from the replicas' /v1/models
        urls = [url.rstrip("/").removesuffix("/v1") for url in upstreams]
        self.router = Router([Replica(url) for url in urls if is_ip_literal(url)], affinity_slack)
        targets = [Target.of(url) for url in urls if not is_ip_literal(url)]
        self._capacity = max_loaded_adapters
        timeouts = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=30.0, pool=30.0).as_dict()
        if client is None:
            tls = None if ca_bundle is None else tls_context(ca_bundle)  # None: the system's CAs, if needed
            client = Http1Transport(max_connections, ssl_context=tls)
        self.hop = Hop(client, api_key, timeouts)
        self._paths: dict[str, Path] = {}  # adapter name -> registry folder
        self.watch = Watch(
            self.router,
            self.hop,
            self._paths,
            self._learnt_context,
            targets=targets,
            resolver=resolver,
            health_interval=health_interval,
            health_timeout=HEALTH_TIMEOUT,  # read here, so that a test can set it on this module
            resolve_interval=resolve_interval,
        )
        self.supervisor = supervisor  # --spawn: the local vLLM server this engine runs

    @property
    def _events(self) -> EngineEvents:
        return self.watch.events

    def subscribe(self, events: EngineEvents) -> None:
        self.watch.events = events

    def _learnt_context(self, tokens: int) -> None:
        self.max_context = tokens

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.start()
        self.watch.start()

    async def close(self) -> None:
        await self.watch.close()
        await self.hop.client.aclose()
        if self.supervisor is not None:
            await self.supervisor.close()

    async def check_replicas(self) -> None:
        """One round of health checks (the health loop runs it every ``health_interval`` seconds)."""
        await self.watch.check_all()

    async def read_gauges(self) -> None:
        """One round of reading vLLM's running/waiting counts (the loop starts one per check)."""
        await self.watch.read_gauges()

    async def discover(self) -> None:
        """One round of upstream discovery (its loop runs it every ``resolve_interval`` seconds)."""
        await self.watch.discover()

    async def health(self) -> EngineHealth:
        replicas = self.router.replicas
        up = self.router.up()
        counts = {"running": 0, "waiting": 0}
        for replica in up:
            for key in counts:
                counts[key] += replica.gauges.get(key, 0)
        extra: dict[str, object] = {"replicas_up": len(up), "replicas": len(replicas), **counts}
        extra["upstreams"] = [r.status() for r in replicas]
        if self.watch.targets:
            extra["discovery"] = [t.status() for t in self.watch.targets]
        if up:
            return EngineHealth(True, "ready", extra)
        if self.supervisor is not None:
            restarts = self.supervisor.restarts
            return EngineHealth(False, f"vLLM is starting (restarts so far: {restarts})", extra)
        return EngineHealth(False, "no vLLM replica answers", extra)

    # -- adapters --------------------------------------------------------------
    async def ensure_adapter(self, name: str, path: Path) -> None:
        """Remember where ``name`` lives; it is loaded on the replica that first needs it."""
        if self._paths.get(name) is path:
            return  # the registry hands out the same Adapter while its files are unchanged
        if not (path / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"The adapter `{name}` has no files to load.", param="model")
        self._paths[name] = path

    async def _load_on(self, replica: Replica, name: str) -> None:
        if replica.holds(name):
            replica.touch(name)
            return
        async with replica.lock(name):  # concurrent first requests: one load
            if replica.holds(name):
                return
            await self._make_room(replica)
            started = time.perf_counter()
            body = {"lora_name": name, "lora_path": str(self._paths[name])}
            status, answer = await self.hop.post(replica, "/v1/load_lora_adapter", body)
            if status in (401, 403):
                raise refusal(status, "/v1/load_lora_adapter", self.hop.has_key)
            text = answer.decode(errors="replace")
            if status != 200 and "already" not in text:
                reason = error_message(_json(text), text)[:300]  # vLLM's text, capped
                log.error("replica %s refused adapter %s (%s): %s", replica.name, name, status, reason)
                raise AdapterLoadError(f"The model server could not load the adapter `{name}`: {reason}")
            replica.adapters[name] = None
            self._events.adapter_loaded(name, time.perf_counter() - started)

    async def _make_room(self, replica: Replica) -> None:
        while len(replica.adapters) >= self._capacity:
            victim = next(replica.evictable(), None)
            if victim is None:
                return  # every held adapter is in use: go over the limit for now
            del replica.adapters[victim]
            try:
                await self.hop.post(replica, "/v1/unload_lora_adapter", {"lora_name": victim})
            except httpx.HTTPError as exc:
                log.warning("replica %s: unloading %s failed: %s", replica.name, victim, exc)
            self._events.adapter_evicted(victim)

    # -- generation --------------------------------------------------------------
    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        if request.adapter is not None and request.adapter not in self._paths:
            raise ModelNotFoundError(f"The adapter `{request.adapter}` is not registered.", param="model")
        tried: list[Replica] = []
        reloaded = False
        while True:
            replica = self.router.pick(request.adapter, tried)
            with replica.serving(request.adapter):
                try:
                    response = await self._send(replica, request)
                    try:
                        if response.status_code == 404 and request.adapter and not reloaded:
                            replica.adapters.pop(request.adapter, None)  # the replica lost it (restart)
                            reloaded = True
                            continue
                        if response.status_code != 200:
                            if response.status_code in (401, 403):
                                raise refusal(response.status_code, "a generation request", self.hop.has_key)
                            text = (await response.aread()).decode(errors="replace")
                            raise request_error(response.status_code, text, _input_param(request))
                        async for delta in self._relay(response, _reader(request, replica)):
                            yield delta
                        return
                    finally:
                        await response.aclose()  # unread: the connection closes and vLLM aborts
                except _RETRYABLE as exc:
                    log.debug("replica %s failed before answering (%s); trying another", replica.name, exc)
                    self.watch.mark_down(replica, *classify(exc))  # logged once, at WARNING
                    tried.append(replica)

    async def _send(self, replica: Replica, request: GenerationRequest) -> UpstreamReply:
        """The adapter loaded on the replica, then the chat request sent: its reply, head in."""
        if request.adapter is not None:
            await self._load_on(replica, request.adapter)
        model = request.adapter or replica.base_model or self.model_name
        path, body = request_body(request, model)
        return await self.hop.send(replica, path, json.dumps(body).encode(), request.request_id)

    async def _relay(self, response: UpstreamReply, reader: ChunkReader) -> AsyncGenerator[Delta, None]:
        n = reader.n
        try:
            async for data in data_lines(response):
                for delta in reader.feed(data):
                    yield delta
        except httpx.HTTPError as exc:
            raise UpstreamError("The connection to the model server broke while generating.") from exc
        if reader.ended < n:
            raise UpstreamError("The model server ended the stream before the answer was complete.")
        response.release_at_end()  # after [DONE]: the answer ends before the body's last bytes


def _reader(request: GenerationRequest, replica: Replica) -> ChunkReader:
    """The stream's reader: chat chunks, or completion chunks for a raw prompt."""
    if request.prompt is None:
        return ChunkReader(request.n, served_by=replica.name)
    sampling = request.sampling
    return CompletionReader(
        request.n, served_by=replica.name, logprobs=sampling.logprobs, top=sampling.top_logprobs
    )


def _input_param(request: GenerationRequest) -> str:
    return "messages" if request.prompt is None else "prompt"


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None
