"""Upstream discovery: a host name's addresses are the replicas; they join and leave as DNS says.

A scripted resolver drives the joins and leaves; the replicas are ``FakeVllm`` s behind the
MockTransport (by address), and on real sockets at 127.0.0.1 and 127.0.0.2 (one port, as pods of
a headless Service) for the gateway's own client. The system resolver gets one real name.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import generate_latest

from service.accounting import new_facts
from service.domain import ChatMessage, Delta, GenerationRequest, SamplingParams
from service.engines.base import EngineEvents, ServedDelta
from service.engines.vllm.discovery import system_resolver
from service.engines.vllm.engine import VllmEngine
from service.engines.vllm.http1 import Http1Transport
from service.engines.vllm.upstream import HttpxUpstream
from service.metrics import Metrics
from tests.engines.fake_vllm import Cluster, FakeVllm

NAME = "http://vllm.svc:8000"


class Resolver:
    """Answers what the test says; raises ``socket.gaierror`` while ``failing``."""

    def __init__(self, *addresses: str):
        self.addresses = list(addresses)
        self.failing = False
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        if self.failing:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.addresses


class Events(EngineEvents):
    def __init__(self) -> None:
        self.left: list[str] = []
        self.failed: list[tuple[str, str]] = []

    def replica_left(self, replica: str) -> None:
        self.left.append(replica)

    def replica_failed(self, replica: str, kind: str) -> None:
        self.failed.append((replica, kind))


def request(adapter: str | None = None) -> GenerationRequest:
    return GenerationRequest("r", [ChatMessage("user", "hi")], SamplingParams(max_tokens=4), adapter=adapter)


async def answer(engine: VllmEngine, adapter: str | None = None) -> list[Delta]:
    return [d async for d in engine.stream(request(adapter))]


async def shown(engine: VllmEngine, part: str) -> list[dict[str, Any]]:
    """What ``/ready`` shows of the replicas (``upstreams``) or of the names looked up (``discovery``)."""
    return cast(list[dict[str, Any]], (await engine.health()).extra[part])


@pytest.fixture
async def adapter(tmp_path: Path) -> Path:
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    return tmp_path


@pytest.fixture
async def mocked() -> AsyncIterator[tuple[VllmEngine, Cluster, Resolver, Events]]:
    cluster, resolver, events = Cluster(3), Resolver("10.0.0.1"), Events()
    engine = VllmEngine([NAME], model_name="m", client=HttpxUpstream(cluster.transport), resolver=resolver)
    engine.subscribe(events)
    yield engine, cluster, resolver, events
    await engine.close()


async def test_replicas_join_and_leave_and_affinity_follows(
    mocked: tuple[VllmEngine, Cluster, Resolver, Events], adapter: Path
) -> None:
    engine, cluster, resolver, events = mocked
    await engine.ensure_adapter("it@1", adapter)
    assert engine.router.replicas == []  # nothing until the name is looked up
    await engine.discover()
    assert resolver.asked == [("vllm.svc", 8000)]
    [first] = engine.router.replicas
    assert (first.name, first.up, first.url) == ("10.0.0.1:8000", True, NAME)
    deltas = await answer(engine, "it@1")
    assert isinstance(deltas[-1], ServedDelta) and deltas[-1].replica == "10.0.0.1:8000"
    assert cluster[0].headers[-1]["host"] == "vllm.svc:8000"  # the name, not the address

    resolver.addresses = ["10.0.0.1", "10.0.0.2"]
    await engine.discover()
    second = engine.router.replicas[1]
    assert (second.name, second.up, list(second.adapters)) == ("10.0.0.2:8000", True, [])  # starts empty

    cluster[0].delay = 0.05  # a stream in flight on the first when it leaves
    in_flight = asyncio.create_task(answer(engine, "it@1"))
    await asyncio.sleep(0.05)
    assert first.inflight == 1
    resolver.addresses = ["10.0.0.2", "10.0.0.3"]
    await engine.discover()
    assert [r.name for r in engine.router.replicas] == ["10.0.0.2:8000", "10.0.0.3:8000"]
    assert events.left == ["10.0.0.1:8000"]
    finished = await in_flight  # the leaving replica finishes what it had
    assert "".join(d.text for d in finished) == "Hello from vLLM" and finished[-1].finish_reason == "stop"
    await answer(engine, "it@1")  # its adapters are forgotten: loaded anew on one of the others
    assert "it@1" in cluster[1].adapters or "it@1" in cluster[2].adapters
    assert [u["replica"] for u in await shown(engine, "upstreams")] == ["10.0.0.2:8000", "10.0.0.3:8000"]


async def test_a_failed_lookup_keeps_the_replicas_and_is_reported(
    mocked: tuple[VllmEngine, Cluster, Resolver, Events], caplog: pytest.LogCaptureFixture
) -> None:
    engine, _, resolver, events = mocked
    await engine.discover()
    resolver.failing = True
    for _ in range(3):
        await engine.discover()
    assert [r.name for r in engine.router.replicas] == ["10.0.0.1:8000"] and engine.router.replicas[0].up
    assert events.failed == [("vllm.svc:8000", "dns")] * 3
    [target] = await shown(engine, "discovery")
    assert target["addresses"] == ["10.0.0.1"] and "vllm.svc does not resolve" in target["error"]
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1  # once, not per lookup
    resolver.failing = False
    await engine.discover()
    assert "error" not in (await shown(engine, "discovery"))[0]


async def test_an_ip_literal_is_never_looked_up(mocked: tuple[VllmEngine, Cluster, Resolver, Events]) -> None:
    _, cluster, resolver, _ = mocked
    engine = VllmEngine(["http://10.0.0.1:8000"], model_name="m", client=HttpxUpstream(cluster.transport))
    await engine.discover()
    assert [r.name for r in engine.router.replicas] == ["10.0.0.1:8000"] and resolver.asked == []
    assert engine.watch.targets == []


async def test_pods_on_real_sockets_one_port_two_addresses() -> None:
    """Two replicas on 127.0.0.1 and 127.0.0.2, one port: the gateway's own client dials each."""
    cluster = Cluster(2)
    first = await asyncio.start_server(partial(cluster._serve, cluster[0]), "127.0.0.1", 0)
    port = first.sockets[0].getsockname()[1]
    second = await asyncio.start_server(partial(cluster._serve, cluster[1]), "127.0.0.2", port)
    resolver = Resolver("127.0.0.1", "127.0.0.2")
    engine = VllmEngine(
        [f"http://pods.test:{port}"], model_name="m", client=Http1Transport(), resolver=resolver
    )
    try:
        await engine.discover()
        assert [r.up for r in engine.router.replicas] == [True, True]
        served = {(await answer(engine))[-1].replica for _ in range(4)}  # type: ignore[attr-defined]
        assert served == {f"127.0.0.1:{port}", f"127.0.0.2:{port}"}  # least busy, round-robin on ties
        assert {h["host"] for fake in (cluster[0], cluster[1]) for h in fake.headers} == {f"pods.test:{port}"}
    finally:
        await engine.close()
        first.close()
        second.close()
        await cluster.close()


async def test_the_system_resolver_and_an_address_nothing_listens_on() -> None:
    """``localhost`` through the system's resolver; an address without a server is down, not fatal."""
    fake = FakeVllm()
    cluster = Cluster(1)
    server = await asyncio.start_server(partial(cluster._serve, fake), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    addresses = await system_resolver("localhost", port)
    assert "127.0.0.1" in addresses
    engine = VllmEngine([f"http://localhost:{port}", f"http://127.0.0.1:{port + 1}"], model_name="m")
    try:
        await engine.discover()
        await engine.check_replicas()
        state = {r.name: (r.up, r.failure) for r in engine.router.replicas}
        assert state[f"127.0.0.1:{port}"] == (True, "")
        assert state[f"127.0.0.1:{port + 1}"] == (False, "unreachable")  # refused: reported, not fatal
        for other in set(state) - {f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"}:
            assert state[other][0] is False  # ::1, where localhost has it: nothing listens there
        assert (await answer(engine))[-1].replica == f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    finally:
        await engine.close()
        server.close()
        await cluster.close()


def test_a_left_replicas_series_go() -> None:
    metrics = Metrics()
    metrics.replica_health("10.0.0.1:8000", False)
    metrics.replica_failed("10.0.0.1:8000", "tls")
    metrics.replica_health("10.0.0.2:8000", True)
    metrics.replica_left("10.0.0.1:8000")
    text = generate_latest(metrics.registry).decode()
    assert "10.0.0.1:8000" not in text and 'loragate_replica_up{replica="10.0.0.2:8000"} 1.0' in text


def test_the_ledger_gets_the_replica_from_a_served_delta_and_none_from_the_embedded_engine() -> None:
    served, local = Metrics().request(), Metrics().request()
    served.facts, local.facts = new_facts("chat"), new_facts("chat")
    served.delta(ServedDelta(0, "", "stop", prompt_tokens=3, completion_tokens=2, replica="10.0.0.1:8000"))
    local.delta(Delta(0, "", "stop", prompt_tokens=3, completion_tokens=2))
    assert (served.facts.replica, served.completion_tokens) == ("10.0.0.1:8000", 2)
    assert local.facts.replica is None
