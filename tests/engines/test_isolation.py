"""One request's failure ends that request alone; the others in the batch go on untouched.

A security review sent ``temperature: 1e-300`` beside 18 other tenants' streams: the draw raised,
the scheduler failed every request in flight, and all 18 ended with an internal error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain import GenerationRequest
from service.engines.local import scheduler as scheduler_module
from service.engines.local.engine import LocalEngine
from service.engines.local.scheduler import Job
from service.errors import EngineFailure
from tests.gates import GatedScheduler, queue_behind

from .helpers import Choice, drain, make_request, reference

VICTIM_TOKENS = 24


async def collect(job: Job) -> dict[int, Choice]:
    """What the engine sent one job: its choices, or the exception it failed with (raised)."""
    choices: dict[int, Choice] = {}
    while sum(c.finish_reason is not None for c in choices.values()) < job.request.n:
        item = await asyncio.wait_for(job.queue.get(), 20)
        if isinstance(item, BaseException):
            raise item
        choice = choices.setdefault(item.index, Choice())
        choice.text += item.text
        if item.finish_reason is not None:
            choice.finish_reason = item.finish_reason
            choice.prompt_tokens, choice.completion_tokens = item.prompt_tokens, item.completion_tokens
    return choices


def submit_together(engine: LocalEngine, requests: list[GenerationRequest]) -> list[Job]:
    """Queue the jobs under the scheduler's lock, so the worker admits them in one prefill."""
    scheduler = engine._scheduler
    assert scheduler is not None
    loop = asyncio.get_running_loop()
    jobs = [Job(request=r, prompt_ids=engine.encode(r.messages), loop=loop) for r in requests]
    with scheduler._wake:
        for job in jobs:
            scheduler.submit(job)
    return jobs


@pytest.fixture
def victim(engine: LocalEngine, reference_model: Any, tokenizer: Any) -> tuple[GenerationRequest, Choice]:
    request = make_request("Tell me about the weather.", VICTIM_TOKENS, ignore_eos=True)
    expected = reference(reference_model, tokenizer, engine.encode(request.messages), VICTIM_TOKENS)
    return request, expected


@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": 1e-300},
        {"temperature": 5e-324, "top_k": 5},
        {"temperature": 1.0, "repetition_penalty": 1e-300},
        {"temperature": 2.0, "min_p": 1.0, "top_p": 5e-324, "top_k": 2**62},
    ],
)
async def test_extreme_sampling_parameters_serve_and_disturb_nobody(
    engine: LocalEngine, victim: tuple[GenerationRequest, Choice], sampling: dict[str, Any]
) -> None:
    request, expected = victim
    attacker = make_request("Break it.", 8, **sampling)
    victim_job, attacker_job = submit_together(engine, [request, attacker])
    victim_out, attacker_out = await asyncio.gather(collect(victim_job), collect(attacker_job))
    assert victim_out == {0: expected}
    assert attacker_out[0].finish_reason in ("stop", "length")


@pytest.fixture
def poisoned_sampler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Sampling raises for rows whose seed is 666: a stand-in for any per-row failure."""
    real = scheduler_module.next_token

    def next_token(logits: torch.Tensor, params: Any, **kwargs: Any) -> int:
        if params.seed == 666:
            raise RuntimeError("injected sampling failure")
        return real(logits, params, **kwargs)

    monkeypatch.setattr(scheduler_module, "next_token", next_token)
    yield


@pytest.mark.usefixtures("poisoned_sampler")
async def test_a_row_that_fails_in_its_first_token_fails_its_request_alone(
    engine: LocalEngine, victim: tuple[GenerationRequest, Choice]
) -> None:
    request, expected = victim
    poisoned = make_request("Poison.", 8, temperature=1.0, seed=666, n=2)
    victim_job, poisoned_job = submit_together(engine, [request, poisoned])
    outcomes = await asyncio.gather(collect(victim_job), collect(poisoned_job), return_exceptions=True)
    assert outcomes[0] == {0: expected}
    assert isinstance(outcomes[1], RuntimeError)
    await _assert_idle(engine)


@pytest.mark.usefixtures("poisoned_sampler")
async def test_a_row_that_fails_mid_decode_fails_its_request_alone(
    engine: LocalEngine, held: GatedScheduler, victim: tuple[GenerationRequest, Choice]
) -> None:
    request, expected = victim
    victim_stream = engine.stream(request)
    first = await anext(victim_stream)  # the victim is held mid-answer while the poisoned one is queued
    poisoned = await queue_behind(held, engine.stream(make_request("Poison.", 8, temperature=1.0, seed=666)))
    rest, failure = await asyncio.gather(drain(victim_stream), poisoned, return_exceptions=True)
    assert isinstance(rest, dict)
    assert first.text + rest[0].text == expected.text and rest[0].finish_reason == expected.finish_reason
    assert isinstance(failure, EngineFailure) and isinstance(failure.__cause__, RuntimeError)
    await _assert_idle(engine)


async def test_a_prefill_that_fails_for_one_prompt_fails_that_request_alone(
    engine: LocalEngine,
    victim: tuple[GenerationRequest, Choice],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Admitted together, the group's prefill fails; each job is retried alone and only the culprit fails."""
    request, expected = victim
    poisoned = make_request("This prompt cannot be prefilled.", 8)
    tail = torch.tensor(engine.encode(poisoned.messages))
    assert engine._scheduler is not None
    model = engine._scheduler.model
    forward = model.forward
    prefills: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:  # a prefill (a decode step feeds one token per row)
            prefills.append(ids.shape[0])
            if ids.shape[1] >= len(tail) and (ids[:, -len(tail) :] == tail).all(dim=1).any():
                raise RuntimeError("injected prefill failure")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky)
    victim_job, poisoned_job = submit_together(engine, [request, poisoned])
    outcomes = await asyncio.gather(collect(victim_job), collect(poisoned_job), return_exceptions=True)
    assert prefills[:3] == [2, 1, 1]  # together, then one at a time
    assert outcomes[0] == {0: expected}
    assert isinstance(outcomes[1], RuntimeError)
    await _assert_idle(engine)


async def _assert_idle(engine: LocalEngine) -> None:
    async with asyncio.timeout(10):
        while (await engine.health()).extra["running"]:
            await asyncio.sleep(0.01)


Sampling = dict[str, Any]
sampling_fields: st.SearchStrategy[Sampling] = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.one_of(st.just(1e-300), st.floats(0.0, 2.0)),
        "top_p": st.floats(0.0, 1.0, exclude_min=True),
        "top_k": st.integers(0, 2**40),
        "min_p": st.floats(0.0, 1.0),
        "repetition_penalty": st.floats(0.01, 10.0),
        "min_tokens": st.integers(0, 4),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "ignore_eos": st.booleans(),
        "stop": st.lists(st.text(max_size=8), max_size=3).map(tuple),
    },
)


def run_in_new_loop(work: Callable[[], Any]) -> Any:
    return asyncio.run(work())


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sampling=sampling_fields, n=st.integers(1, 3))
def test_any_sampling_serves_beside_a_victim(
    engine: LocalEngine, victim: tuple[GenerationRequest, Choice], sampling: Sampling, n: int
) -> None:
    """Property: whatever the sampling fields, the request is served and the victim's text is exact."""
    request, expected = victim
    attacker = make_request("Anything goes.", 6, n=n, **sampling)

    async def both() -> tuple[dict[int, Choice], dict[int, Choice]]:
        jobs = submit_together(engine, [request, attacker])
        return await asyncio.gather(collect(jobs[0]), collect(jobs[1]))  # type: ignore[return-value]

    victim_out, attacker_out = run_in_new_loop(both)
    assert victim_out == {0: expected}
    assert sorted(attacker_out) == list(range(n))
    assert all(c.finish_reason in ("stop", "length") for c in attacker_out.values())
