"""A failing model step fails the requests in flight with EngineFailure, and nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import torch

from service.engines.local.engine import LocalEngine
from service.engines.local.scheduler import Job
from service.errors import EngineFailure
from tests.gates import GatedScheduler, queue_behind

from .helpers import drain, make_request, reference

Condition = Callable[[torch.Tensor], bool]


@pytest.fixture
def fail_once(engine: LocalEngine, monkeypatch: pytest.MonkeyPatch) -> Callable[[Condition], list[bool]]:
    """Make the engine's model raise once, on the first forward whose input_ids meet a condition."""
    assert engine._scheduler is not None
    model = engine._scheduler.model

    def install(condition: Condition) -> list[bool]:
        raised: list[bool] = []
        forward = model.forward

        def flaky(*args: Any, **kwargs: Any) -> Any:
            if not raised and condition(kwargs["input_ids"]):
                raised.append(True)
                raise RuntimeError("injected failure")
            return forward(*args, **kwargs)

        monkeypatch.setattr(model, "forward", flaky)
        return raised

    return install


async def assert_serves(engine: LocalEngine, model: Any, tokenizer: Any) -> None:
    request = make_request("Are you still there?", 10)
    result = await asyncio.wait_for(drain(engine.stream(request)), 10)
    assert result == {0: reference(model, tokenizer, engine.encode(request.messages), 10)}


async def test_failure_in_prefill_fails_the_new_request(
    engine: LocalEngine, fail_once: Callable[[Condition], list[bool]], reference_model: Any, tokenizer: Any
) -> None:
    raised = fail_once(lambda ids: ids.shape[1] > 1)
    with pytest.raises(EngineFailure):
        await asyncio.wait_for(drain(engine.stream(make_request("Hello there", 5))), 10)
    assert raised
    await assert_serves(engine, reference_model, tokenizer)


async def test_failure_in_a_decode_step_fails_every_running_request(
    engine: LocalEngine,
    held: GatedScheduler,
    fail_once: Callable[[Condition], list[bool]],
    reference_model: Any,
    tokenizer: Any,
) -> None:
    raised = fail_once(lambda ids: tuple(ids.shape) == (2, 1))
    first = engine.stream(make_request("A long answer, please.", 200))
    assert (await anext(first)).finish_reason is None
    second = await queue_behind(held, engine.stream(make_request("Another one.", 200)))
    outcomes = await asyncio.wait_for(asyncio.gather(drain(first), second, return_exceptions=True), 10)
    assert raised
    assert [type(o) for o in outcomes] == [EngineFailure, EngineFailure]
    assert all(isinstance(o.__cause__, RuntimeError) for o in outcomes)
    assert (await engine.health()).extra["running"] == 0
    await assert_serves(engine, reference_model, tokenizer)


async def test_failure_leaves_waiting_requests_alone(
    engine: LocalEngine,
    held: GatedScheduler,
    fail_once: Callable[[Condition], list[bool]],
    reference_model: Any,
    tokenizer: Any,
) -> None:
    raised = fail_once(lambda ids: ids.shape[1] == 1 and held.waiting > 0)
    full = engine.stream(make_request("Fill the batch.", 200, n=8))  # every row of the batch taken
    assert (await anext(full)).finish_reason is None
    waiting = make_request("Wait for a row.", 6)
    late = await queue_behind(held, engine.stream(waiting))
    outcomes = await asyncio.wait_for(asyncio.gather(drain(full), late, return_exceptions=True), 10)
    assert raised
    assert isinstance(outcomes[0], EngineFailure)
    assert outcomes[1] == {0: reference(reference_model, tokenizer, engine.encode(waiting.messages), 6)}


async def test_a_requester_whose_event_loop_closed_does_not_stop_the_worker(
    engine: LocalEngine, reference_model: Any, tokenizer: Any
) -> None:
    assert engine._scheduler is not None
    gone = asyncio.new_event_loop()
    gone.close()
    request = make_request("Nobody will read this.", 50)
    engine._scheduler.submit(Job(request=request, prompt_ids=engine.encode(request.messages), loop=gone))
    await assert_serves(engine, reference_model, tokenizer)
    async with asyncio.timeout(5):
        while (await engine.health()).extra["running"]:
            await asyncio.sleep(0.01)
