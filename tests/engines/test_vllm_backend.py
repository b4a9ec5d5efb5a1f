"""The vLLM backend against scripted replicas: no vLLM needed, milliseconds each.

Every test runs over each ``UpstreamClient``: ``HttpxUpstream`` over ``httpx.MockTransport``, and
the gateway's own HTTP/1.1 client and httpx's pool against the same replicas on real sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

import pytest

from service.domain import ChatMessage, Delta, GenerationRequest, SamplingParams
from service.engines.base import EngineEvents
from service.engines.vllm import engine as vllm
from service.engines.vllm.engine import MISSES_TO_DOWN, VllmEngine
from service.errors import (
    AdapterLoadError,
    ContextLengthError,
    EngineUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
    UpstreamError,
)
from tests.engines.fake_vllm import WIRES, Cluster, Wire


class Recorded(EngineEvents):
    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.evicted: list[str] = []
        self.health: list[tuple[str, bool]] = []

    def adapter_loaded(self, name: str, seconds: float) -> None:
        self.loaded.append(name)

    def adapter_evicted(self, name: str) -> None:
        self.evicted.append(name)

    def replica_health(self, replica: str, up: bool) -> None:
        self.health.append((replica, up))


@pytest.fixture
def adapter_dirs(tmp_path: Path) -> dict[str, Path]:
    dirs = {}
    for name in ("it@1", "legal@1", "hr@1"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text('{"r": 8}')
        dirs[name] = folder
    return dirs


class EngineOn(Protocol):
    def __call__(
        self, cluster: Cluster, adapters: dict[str, Path] | None = None, **options: Any
    ) -> Coroutine[Any, Any, VllmEngine]: ...


@pytest.fixture(params=WIRES)
async def engine_on(request: pytest.FixtureRequest) -> AsyncIterator[EngineOn]:
    """A backend in front of a cluster, over the client of this run; both closed after the test."""
    wire: Wire = request.param
    made: list[tuple[Cluster, VllmEngine]] = []

    async def make(cluster: Cluster, adapters: dict[str, Path] | None = None, **options: Any) -> VllmEngine:
        if wire != "mock":
            await cluster.listen()
        client = cluster.client(wire)
        engine = VllmEngine(cluster.urls, model_name="gateway-name", client=client, **options)
        made.append((cluster, engine))
        engine.subscribe(Recorded())
        for name, path in (adapters or {}).items():
            await engine.ensure_adapter(name, path)
        await engine.check_replicas()  # what the health loop does every few seconds
        return engine

    yield make
    for cluster, engine in made:
        await engine.close()
        await cluster.close()


def request(adapter: str | None = None, n: int = 1, **sampling: object) -> GenerationRequest:
    params = SamplingParams(**({"max_tokens": 8} | sampling))  # type: ignore[arg-type]
    return GenerationRequest("req-1", [ChatMessage("user", "hi")], params, n=n, adapter=adapter)


async def collect(stream: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in stream]


async def eventually(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not check():
            await asyncio.sleep(0.005)


def events(engine: VllmEngine) -> Recorded:
    assert isinstance(engine._events, Recorded)
    return engine._events


async def test_base_request_goes_out_streamed_with_usage_and_the_base_name(engine_on: EngineOn) -> None:
    cluster = Cluster(1)
    engine = await engine_on(cluster)
    deltas = await collect(engine.stream(request(temperature=0.0, stop=("##",), top_k=0)))
    assert "".join(d.text for d in deltas) == "Hello from vLLM"
    (sent,) = cluster[0].bodies_sent("/v1/chat/completions")
    assert sent["model"] == "base-model"  # as the replica calls it, learnt from /v1/models
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["temperature"] == 0.0 and sent["stop"] == ["##"] and sent["top_k"] == -1
    last = deltas[-1]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("stop", 7, 3)
    assert engine.max_context == 2048


async def test_n_choices_finish_after_usage_with_totals_on_the_last(engine_on: EngineOn) -> None:
    cluster = Cluster(1)
    engine = await engine_on(cluster)
    deltas = await collect(engine.stream(request(n=2, ignore_eos=True)))
    finishing = [d for d in deltas if d.finish_reason]
    assert [(d.index, d.finish_reason) for d in finishing] == [(0, "length"), (1, "length")]
    assert sum(d.completion_tokens for d in finishing) == 6
    assert {d.prompt_tokens for d in finishing} == {7}
    assert deltas.index(finishing[0]) > max(i for i, d in enumerate(deltas) if d.text)


async def test_adapter_is_loaded_from_the_registry_path_then_used_as_the_model(
    engine_on: EngineOn,
    adapter_dirs: dict[str, Path],
) -> None:
    cluster = Cluster(1)
    engine = await engine_on(cluster, adapter_dirs)
    await collect(engine.stream(request("it@1")))
    await collect(engine.stream(request("it@1")))
    loads = cluster[0].bodies_sent("/v1/load_lora_adapter")
    assert loads == [{"lora_name": "it@1", "lora_path": str(adapter_dirs["it@1"])}]
    assert [b["model"] for b in cluster[0].bodies_sent("/v1/chat/completions")] == ["it@1", "it@1"]
    assert events(engine).loaded == ["it@1"]


async def test_concurrent_first_requests_load_an_adapter_once(
    engine_on: EngineOn, adapter_dirs: dict[str, Path]
) -> None:
    cluster = Cluster(1)
    cluster[0].load_delay = 0.05
    engine = await engine_on(cluster, adapter_dirs)
    results = await asyncio.gather(*(collect(engine.stream(request("legal@1"))) for _ in range(6)))
    assert all("".join(d.text for d in r) == "Hello from vLLM" for r in results)
    assert len(cluster[0].bodies_sent("/v1/load_lora_adapter")) == 1


async def test_unregistered_adapter_is_refused_before_any_call(engine_on: EngineOn) -> None:
    cluster = Cluster(1)
    engine = await engine_on(cluster)
    with pytest.raises(ModelNotFoundError):
        await collect(engine.stream(request("never-registered@1")))
    assert "/v1/chat/completions" not in cluster[0].paths()


async def test_ensure_adapter_refuses_a_folder_without_adapter_files(
    engine_on: EngineOn, tmp_path: Path
) -> None:
    engine = await engine_on(Cluster(1))
    with pytest.raises(ModelNotFoundError):
        await engine.ensure_adapter("ghost@1", tmp_path)


@pytest.mark.parametrize("status", [400, 404, 500])
async def test_a_refused_adapter_is_a_clear_error_and_the_replica_stays(
    engine_on: EngineOn, adapter_dirs: dict[str, Path], status: int
) -> None:
    cluster = Cluster(1)
    cluster[0].refuse_load = status
    engine = await engine_on(cluster, adapter_dirs)
    refused = r"could not load the adapter `it@1`: rank 64 exceeds"
    with pytest.raises(AdapterLoadError, match=refused) as caught:
        await collect(engine.stream(request("it@1")))
    assert caught.value.status_code == 500
    assert engine.router.replicas[0].up
    assert "".join(d.text for d in await collect(engine.stream(request()))) == "Hello from vLLM"


async def test_least_recently_used_adapter_is_unloaded_beyond_capacity(
    engine_on: EngineOn, adapter_dirs: dict[str, Path]
) -> None:
    cluster = Cluster(1)
    engine = await engine_on(cluster, adapter_dirs, max_loaded_adapters=2)
    for name in ("it@1", "legal@1", "it@1", "hr@1"):
        await collect(engine.stream(request(name)))
    assert cluster[0].bodies_sent("/v1/unload_lora_adapter") == [{"lora_name": "legal@1"}]
    assert set(cluster[0].adapters) == {"it@1", "hr@1"}
    assert events(engine).evicted == ["legal@1"]


async def test_an_adapter_in_use_is_never_unloaded(
    engine_on: EngineOn, adapter_dirs: dict[str, Path]
) -> None:
    cluster = Cluster(1)
    engine = await engine_on(cluster, adapter_dirs, max_loaded_adapters=1)
    busy = engine.stream(request("it@1"))
    first = await anext(busy)  # it@1 is in use for as long as its stream is open
    await collect(engine.stream(request("legal@1")))  # it@1 is busy: go over the limit for now
    assert first.text + "".join(d.text for d in await collect(busy)) == "Hello from vLLM"
    assert cluster[0].bodies_sent("/v1/unload_lora_adapter") == []


async def test_a_replica_that_lost_its_adapters_gets_them_again(
    engine_on: EngineOn, adapter_dirs: dict[str, Path]
) -> None:
    cluster = Cluster(1)
    engine = await engine_on(cluster, adapter_dirs)
    await collect(engine.stream(request("it@1")))
    cluster[0].adapters.clear()  # vLLM restarted between two health checks
    assert "".join(d.text for d in await collect(engine.stream(request("it@1")))) == "Hello from vLLM"
    assert len(cluster[0].bodies_sent("/v1/load_lora_adapter")) == 2


async def test_affinity_sends_an_adapter_to_the_replica_holding_it(
    engine_on: EngineOn, adapter_dirs: dict[str, Path]
) -> None:
    cluster = Cluster(2)
    engine = await engine_on(cluster, adapter_dirs)
    await collect(engine.stream(request("it@1")))
    holder = 0 if "it@1" in cluster[0].adapters else 1
    for _ in range(4):
        await collect(engine.stream(request("it@1")))
    assert len(cluster[holder].bodies_sent("/v1/chat/completions")) == 5
    assert cluster[1 - holder].bodies_sent("/v1/load_lora_adapter") == []


async def test_a_much_busier_holder_loses_to_the_least_loaded(
    engine_on: EngineOn, adapter_dirs: dict[str, Path]
) -> None:
    cluster = Cluster(2)
    engine = await engine_on(cluster, adapter_dirs, affinity_slack=1)
    await collect(engine.stream(request("it@1")))
    holder = engine.router.replicas[0 if "it@1" in cluster[0].adapters else 1]
    holder.inflight = 5  # pretend it is swamped
    await collect(engine.stream(request("it@1")))
    other = 1 - engine.router.replicas.index(holder)
    assert "it@1" in cluster[other].adapters
    holder.inflight = 0


async def test_a_connect_failure_is_retried_on_another_replica(engine_on: EngineOn) -> None:
    cluster = Cluster(2)
    engine = await engine_on(cluster)
    cluster[0].alive = False  # died after the last health check
    for _ in range(3):
        assert "".join(d.text for d in await collect(engine.stream(request()))) == "Hello from vLLM"
    assert not engine.router.replicas[0].up
    assert (engine.router.replicas[0].name, False) in events(engine).health


async def test_no_replica_up_is_503(engine_on: EngineOn) -> None:
    cluster = Cluster(1)
    cluster[0].alive = False
    engine = await engine_on(cluster)
    with pytest.raises(EngineUnavailableError):
        await collect(engine.stream(request()))
    assert not (await engine.health()).ready


async def test_health_checks_take_a_replica_out_and_bring_it_back(
    engine_on: EngineOn, adapter_dirs: dict[str, Path]
) -> None:
    cluster = Cluster(2)
    engine = await engine_on(cluster, adapter_dirs)
    assert (await engine.health()).extra["replicas_up"] == 2
    cluster[1].alive = False
    await engine.check_replicas()
    assert [r.up for r in engine.router.replicas] == [True, False]
    cluster[1].alive = True
    cluster[1].adapters = {"legal@1": "/somewhere"}  # it came back holding an adapter
    await engine.check_replicas()
    assert [r.up for r in engine.router.replicas] == [True, True]
    assert list(engine.router.replicas[1].adapters) == ["legal@1"]
    second = engine.router.replicas[1].name
    assert events(engine).health[-2:] == [(second, False), (second, True)]


async def test_a_replica_too_busy_to_answer_health_checks_stays_in_until_it_misses_three(
    engine_on: EngineOn, adapter_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vllm, "HEALTH_TIMEOUT", 0.3)  # over a socket, a slow answer is a real wait
    cluster = Cluster(2)
    engine = await engine_on(cluster, adapter_dirs)
    await collect(engine.stream(request(adapter="legal@1")))
    holder = next(r for r in engine.router.replicas if r.holds("legal@1"))
    cluster.replicas[holder.url].slow_health = True
    for _ in range(MISSES_TO_DOWN - 1):
        await engine.check_replicas()
    assert holder.up and holder.holds("legal@1"), "a late answer or two is not a dead replica"
    cluster.replicas[holder.url].slow_health = False
    await engine.check_replicas()  # an answer resets the count
    cluster.replicas[holder.url].slow_health = True
    for _ in range(MISSES_TO_DOWN - 1):
        await engine.check_replicas()
    assert holder.up
    await engine.check_replicas()
    assert not holder.up
    assert [e for e in events(engine).health if not e[1]] == [(holder.name, False)]


async def test_a_break_mid_stream_raises_after_the_text_already_sent(engine_on: EngineOn) -> None:
    cluster = Cluster(2)
    cluster[0].break_after = cluster[1].break_after = 2
    engine = await engine_on(cluster)
    received: list[str] = []
    with pytest.raises(UpstreamError, match="broke while generating"):
        async for delta in engine.stream(request()):
            received.append(delta.text)
    assert received == ["Hello", " from"]
    assert sum(len(r.bodies_sent("/v1/chat/completions")) for r in cluster.replicas.values()) == 1  # no retry


async def test_closing_the_stream_closes_the_upstream_response(engine_on: EngineOn) -> None:
    cluster = Cluster(1)
    engine = await engine_on(cluster)
    stream = engine.stream(request())
    assert (await anext(stream)).text == "Hello"
    await stream.aclose()  # type: ignore[attr-defined]
    await eventually(lambda: cluster[0].bodies[0].closed)  # over a socket, when the server sees it
    assert engine.router.replicas[0].inflight == 0


async def test_an_error_event_in_the_stream_raises(engine_on: EngineOn) -> None:
    cluster = Cluster(1)

    cluster[0].error_event = "EngineCore encountered an issue."
    engine = await engine_on(cluster)
    with pytest.raises(UpstreamError, match="EngineCore encountered an issue"):
        await collect(engine.stream(request()))


@pytest.mark.parametrize(
    ("status", "message", "error"),
    [
        (400, "max_tokens=5000 cannot be greater than max_model_len=1024.", ContextLengthError),
        (400, "n must be 1 when using greedy sampling, got 2.", InvalidRequestError),
        (404, "The model `x` does not exist.", ModelNotFoundError),
        (500, "EngineCore encountered an issue.", UpstreamError),
    ],
)
async def test_upstream_statuses_become_the_matching_errors(
    engine_on: EngineOn, status: int, message: str, error: type[Exception]
) -> None:
    cluster = Cluster(1)
    cluster[0].chat_status, cluster[0].chat_error = status, message
    engine = await engine_on(cluster)
    with pytest.raises(error) as caught:
        await collect(engine.stream(request()))
    assert message in str(caught.value)


async def test_health_reports_vllms_own_request_counts(engine_on: EngineOn) -> None:
    cluster = Cluster(2)
    cluster[0].running, cluster[1].running = 2, 3
    engine = await engine_on(cluster)
    await engine.read_gauges()  # what the health loop starts beside each round of checks
    health = await engine.health()
    assert health.ready and health.extra["running"] == 5 and health.extra["replicas"] == 2


async def test_health_answers_from_the_last_counts_while_metrics_is_slow(engine_on: EngineOn) -> None:
    cluster = Cluster(1)
    cluster[0].running = 2
    engine = await engine_on(cluster)
    await engine.read_gauges()
    cluster[0].running, cluster[0].metrics_gate = 7, asyncio.Event()
    reading = asyncio.create_task(engine.read_gauges())
    assert (await asyncio.wait_for(engine.health(), 1)).extra["running"] == 2
    cluster[0].metrics_gate.set()
    await reading
    assert (await engine.health()).extra["running"] == 7


async def test_a_hanging_metrics_endpoint_holds_up_no_health_check(engine_on: EngineOn) -> None:
    cluster = Cluster(1)
    cluster[0].metrics_gate = asyncio.Event()  # never answers
    engine = await engine_on(cluster, health_interval=0.01)
    await engine.start()
    async with asyncio.timeout(10):  # rounds of health checks go on while /metrics hangs
        while cluster[0].paths().count("/health") < 5:
            await asyncio.sleep(0.01)
    await engine.close()
    assert cluster[0].paths().count("/metrics") == 1
