"""The vLLM backend: one or more vLLM OpenAI servers (``vllm serve ... --enable-lora``) over HTTP.

- Every call to a replica goes through one ``UpstreamClient`` (``upstream.py``), and the backend
  never asks which it has: by default the gateway's own HTTP/1.1 client (``http1``: asyncio and
  httptools' C parser, no httpx Request or Response per call: a quarter of httpcore's CPU per
  request); ``HttpxUpstream`` over httpx's own pool (TLS, proxies), or over an
  ``httpx.MockTransport`` in the unit tests. Failures are httpx's exception classes either way.

- Requests go out as streamed chat completions (a raw ``prompt``: completions) with
  ``model`` = the adapter's name in vLLM (the registry ref, ``name@version``) or the base
  model; the SSE reply is relayed chunk by chunk (``wire.py``: tools, constraints as
  ``response_format``, logprobs). Closing the stream (the client left) closes the upstream
  response, and vLLM aborts the request.
- Adapters are registered on a replica with ``/v1/load_lora_adapter`` from the
  registry's path just before the first request there that needs them (one load,
  however many requests wait for it), and unloaded when the replica holds more than
  ``max_loaded_adapters`` (least recently used first, never one in use).
- Replicas are chosen by ``routing.Router`` (affinity, else least loaded). A health
  loop takes dead replicas out and brings them back, re-reading what they hold
  (a restarted vLLM holds nothing). A connection failure before the first byte is
  retried on another replica.
- vLLM's own running/waiting counts are read from each replica's /metrics in the
  background, beside the health checks, and ``health()`` answers from what was last
  read: a vLLM that streams on a loaded host can take many seconds to answer /metrics,
  and neither ``/ready`` nor a scrape of the gateway's /metrics may wait for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

import httpx

from ...domain import Delta, GenerationRequest
from ...errors import AdapterLoadError, ModelNotFoundError, UpstreamError
from ..base import EngineEvents, EngineHealth
from .http1 import Http1Transport
from .routing import Replica, Router
from .spawn import VllmSupervisor
from .upstream import UpstreamClient, UpstreamReply, fetch
from .wire import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    ChunkReader,
    CompletionReader,
    data_lines,
    error_message,
    request_body,
    request_error,
)

log = logging.getLogger(__name__)

_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.PoolTimeout)
_GAUGES = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting"}
MISSES_TO_DOWN = 3  # health checks in a row without an answer in time before a replica is taken out
HEALTH_TIMEOUT = 2.0  # /health: an answer later than this is a missed check
GAUGES_TIMEOUT = 30.0  # vLLM's /metrics, read in the background: late is better than nothing
_JSON = [(b"content-type", b"application/json")]


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
        client: UpstreamClient | None = None,
        supervisor: VllmSupervisor | None = None,
    ):
        self.model_name = model_name
        self.max_context = 0  # learnt from the replicas' /v1/models
        replicas = [Replica(url.rstrip("/").removesuffix("/v1")) for url in upstreams]
        self.router = Router(replicas, affinity_slack)
        self._capacity = max_loaded_adapters
        self._health_interval = health_interval
        timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=30.0, pool=30.0)
        self._timeouts = timeout.as_dict()
        self._urls = {  # parsed once
            (r.url, path): httpx.URL(r.url + path) for r in replicas for path in (CHAT_PATH, COMPLETIONS_PATH)
        }
        self._client: UpstreamClient = client or Http1Transport(max_connections)
        self._paths: dict[str, Path] = {}  # adapter name -> registry folder
        self._events = EngineEvents()
        self._checker: asyncio.Task[None] | None = None
        self.supervisor = supervisor  # --spawn: the local vLLM server this engine runs

    def subscribe(self, events: EngineEvents) -> None:
        self._events = events

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.start()
        self._checker = asyncio.create_task(self._health_loop(), name="loragate-vllm-health")

    async def close(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            await asyncio.gather(self._checker, return_exceptions=True)
        await self._client.aclose()
        if self.supervisor is not None:
            await self.supervisor.close()

    async def check_replicas(self) -> None:
        """One round of health checks (the loop runs it every ``health_interval`` seconds)."""
        await asyncio.gather(*(self._check(r) for r in self.router.replicas))

    async def read_gauges(self) -> None:
        """One round of reading vLLM's running/waiting counts (the loop starts one per check)."""
        await asyncio.gather(*(self._read_gauges(r) for r in self.router.up()))

    async def _health_loop(self) -> None:
        gauges: asyncio.Task[None] | None = None
        try:
            while True:
                await self.check_replicas()
                if gauges is None or gauges.done():  # a slow /metrics holds up no health check
                    gauges = asyncio.create_task(self.read_gauges(), name="loragate-vllm-gauges")
                await asyncio.sleep(self._health_interval)
        finally:
            if gauges is not None:
                gauges.cancel()
                await asyncio.gather(gauges, return_exceptions=True)

    async def _check(self, replica: Replica) -> None:
        """Refused connections take a replica out at once; slow answers only ``MISSES_TO_DOWN`` in a row.

        A busy vLLM can take seconds to answer /health on a loaded host; one late answer must not
        take it out of service (and make the gateway forget what it holds).
        """
        try:
            status, _ = await self._get(f"{replica.url}/health", HEALTH_TIMEOUT)
            alive = status == 200
            if alive and not replica.up:
                await self._sync(replica)
            replica.missed_checks = 0
        except httpx.TimeoutException as exc:
            replica.missed_checks += 1
            log.debug(
                "replica %s: no answer in time (%d in a row): %s", replica.name, replica.missed_checks, exc
            )
            alive = replica.up and replica.missed_checks < MISSES_TO_DOWN
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log.debug("replica %s: %s", replica.name, exc)
            alive = False
        if alive != replica.up:
            log.log(
                logging.INFO if alive else logging.WARNING,
                "vLLM replica %s is %s",
                replica.name,
                "up" if alive else "DOWN",
            )
            replica.up = alive
            self._events.replica_health(replica.name, alive)

    async def _sync(self, replica: Replica) -> None:
        """Read what a replica (new, or back from the dead) serves: its base model and adapters."""
        status, body = await self._get(f"{replica.url}/v1/models", 5.0)
        if not 200 <= status < 300:
            raise ValueError(f"/v1/models answered {status}")
        models = json.loads(body)["data"]
        base = next(m for m in models if not m.get("parent"))
        replica.base_model = base["id"]
        replica.max_model_len = int(base.get("max_model_len") or 0)
        replica.gauges = {}
        replica.adapters.clear()
        replica.adapters.update((m["id"], None) for m in models if m.get("parent") and m["id"] in self._paths)
        lengths = [r.max_model_len for r in self.router.replicas if r.max_model_len]
        self.max_context = min(lengths) if lengths else 0

    async def health(self) -> EngineHealth:
        up = self.router.up()
        counts = {"running": 0, "waiting": 0}
        for replica in up:
            for key in counts:
                counts[key] += replica.gauges.get(key, 0)
        extra: dict[str, object] = {"replicas_up": len(up), "replicas": len(self.router.replicas), **counts}
        if up:
            return EngineHealth(True, "ready", extra)
        if self.supervisor is not None:
            restarts = self.supervisor.restarts
            return EngineHealth(False, f"vLLM is starting (restarts so far: {restarts})", extra)
        return EngineHealth(False, "no vLLM replica answers", extra)

    async def _read_gauges(self, replica: Replica) -> None:
        try:
            text = (await self._get(f"{replica.url}/metrics", GAUGES_TIMEOUT))[1].decode(errors="replace")
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
            status, answer = await self._post(f"{replica.url}/v1/load_lora_adapter", body)
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
                await self._post(f"{replica.url}/v1/unload_lora_adapter", {"lora_name": victim})
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
                            text = (await response.aread()).decode(errors="replace")
                            raise request_error(response.status_code, text, _input_param(request))
                        async for delta in self._relay(response, _reader(request)):
                            yield delta
                        return
                    finally:
                        await response.aclose()  # unread: the connection closes and vLLM aborts
                except _RETRYABLE as exc:
                    log.warning("replica %s failed before answering (%s); trying another", replica.name, exc)
                    replica.up = False
                    self._events.replica_health(replica.name, False)
                    tried.append(replica)

    async def _send(self, replica: Replica, request: GenerationRequest) -> UpstreamReply:
        """The adapter loaded on the replica, then the chat request sent: its reply, head in."""
        if request.adapter is not None:
            await self._load_on(replica, request.adapter)
        model = request.adapter or replica.base_model or self.model_name
        path, body = request_body(request, model)
        content = json.dumps(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"x-request-id", request.request_id.encode("latin-1", "replace")),
        ]
        url = self._urls[replica.url, path]
        return await self._client.request("POST", url, content, headers, self._timeouts)

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

    # -- the other calls: whole answers ---------------------------------------------
    async def _get(self, url: str, timeout: float) -> tuple[int, bytes]:
        return await fetch(self._client, "GET", url, b"", (), httpx.Timeout(timeout).as_dict())

    async def _post(self, url: str, body: object) -> tuple[int, bytes]:
        return await fetch(self._client, "POST", url, json.dumps(body).encode(), _JSON, self._timeouts)


def _reader(request: GenerationRequest) -> ChunkReader:
    """The stream's reader: chat chunks, or completion chunks for a raw prompt."""
    if request.prompt is None:
        return ChunkReader(request.n)
    return CompletionReader(request.n, logprobs=request.sampling.logprobs, top=request.sampling.top_logprobs)


def _input_param(request: GenerationRequest) -> str:
    return "messages" if request.prompt is None else "prompt"


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None
