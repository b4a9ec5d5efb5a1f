"""kill -9 the gateway process under load: every answer a client received whole is in its ledger.

A real gateway process stands in front of ``instant_openai`` (``gateway_process``). Clients send
chat and completions, streamed and not, each with its own ``x-request-id``, 24 at a time. An
answer is complete when the client has its whole JSON body, or, streamed, its ``[DONE]``. Well
into the load the gateway gets SIGKILL; the clients read what was already on its way and stop.
Then the ledger's SQLite file is opened (its WAL replayed) and:

- every completed answer's request id is in it (the gateway commits a record before its
  answer's last bytes: service/middleware.py);
- what it lacks is the bound the ledger states (docs/usage-ledger.md): requests still in flight
  when the gateway died, none other.

With ``ledger_batch_seconds`` 0.25 the writer gathers records for 250 ms under load: a gateway
that sent an answer before its record's commit would lose the answers of up to 250 ms here, so
that case fails whenever the gateway writes after answering. Checked by making
``accounting.record`` not wait for the commit: 20 runs of 20 failed, losing 6 to 96 completed
answers each (at the default 1 ms, 0 to 10: that case alone would not catch it). The default
runs as deployed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.ledger.conftest import stored
from tests.ledger.gateway_process import MODEL, Gateway, start_gateway, start_stand_in

CONCURRENCY = 24
KILL_AFTER = 300  # completed answers before the kill: well into the load


@dataclass
class Load:
    completed: set[str] = field(default_factory=set)
    in_flight: set[str] = field(default_factory=set)  # sent, not yet complete
    in_flight_at_kill: set[str] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)  # a status other than 200: none expected
    killed_at: float | None = None


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_stand_in(tmp_path_factory.mktemp("stand-in"))
    yield url
    process.kill()
    process.wait()


def _request(n: int) -> tuple[str, dict[str, object], dict[str, str], bool]:
    """The n-th request: chat or completions, streamed or not, department it or legal."""
    stream, chat = n % 2 == 0, n % 4 < 2
    body: dict[str, object] = {"model": MODEL, "max_tokens": 8, "stream": stream}
    if chat:
        body["messages"] = [{"role": "user", "content": f"Question {n}?"}]
    else:
        body["prompt"] = f"Once upon a time {n}"
    headers = {"x-request-id": f"kill9-{n}", "x-department": ("it", "legal")[n % 3 % 2]}
    return ("/chat/completions" if chat else "/completions"), body, headers, stream


async def _one(client: httpx.AsyncClient, n: int, load: Load) -> None:
    path, body, headers, stream = _request(n)
    request_id = headers["x-request-id"]
    load.in_flight.add(request_id)
    if stream:
        async with client.stream("POST", path, json=body, headers=headers) as answer:
            if answer.status_code != 200:
                load.refused.append(f"{request_id}: {answer.status_code}")
                return
            async for line in answer.aiter_lines():
                if line == "data: [DONE]":
                    load.completed.add(request_id)
    else:
        answer = await client.post(path, json=body, headers=headers)
        if answer.status_code != 200:
            load.refused.append(f"{request_id}: {answer.status_code}")
            return
        if json.loads(answer.content)["choices"]:
            load.completed.add(request_id)
    load.in_flight.discard(request_id)


async def _drive(gateway: Gateway) -> Load:
    """Requests until the gateway is dead; it is killed after ``KILL_AFTER`` completed answers."""
    load, numbers = Load(), itertools.count()
    auth = {"Authorization": f"Bearer {gateway.key}"}
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=gateway.url, headers=auth, timeout=10, limits=limits) as client:

        async def worker() -> None:
            while load.killed_at is None:  # none starts after the kill
                try:
                    await _one(client, next(numbers), load)
                except httpx.TransportError:  # the gateway is gone: this one was in flight
                    return
                if load.killed_at is None and len(load.completed) >= KILL_AFTER:
                    load.in_flight_at_kill = set(load.in_flight)
                    os.kill(gateway.process.pid, signal.SIGKILL)
                    load.killed_at = time.monotonic()

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(CONCURRENCY))), 30)
    return load


@pytest.mark.parametrize("batch_seconds", ["0.001", "0.25"])
def test_every_completed_answer_survives_a_sigkill_of_the_gateway(
    tmp_path: Path, stand_in: str, batch_seconds: str
) -> None:
    gateway = start_gateway(tmp_path, stand_in, "--ledger-batch-seconds", batch_seconds)
    try:
        load = asyncio.run(_drive(gateway))
        assert gateway.process.wait(10) == -signal.SIGKILL
    finally:
        gateway.process.kill()
        gateway.process.wait()
    assert not load.refused, load.refused[:5]
    assert load.in_flight_at_kill, "the gateway was killed with nothing in flight: not under load"

    rows = dict(stored(f"sqlite:///{gateway.ledger}", "request_id, status"))
    print(
        f"{len(load.completed)} answers completed, {len(load.in_flight_at_kill)} in flight at the kill, "
        f"{len(rows)} records in the ledger"
    )
    lost = sorted(load.completed - rows.keys())
    assert not lost, f"{len(lost)} of {len(load.completed)} completed answers not in the ledger: {lost[:5]}"
    assert all(rows[request_id] == 200 for request_id in load.completed)
    # the bound: what the ledger lacks of what was sent is answers in flight at the kill, no more
    sent = load.completed | load.in_flight | load.in_flight_at_kill
    assert sent - rows.keys() <= load.in_flight_at_kill
