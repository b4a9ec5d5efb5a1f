"""A prefill's memory is bounded: jobs x the longest prompt stays within ``max_prefill_tokens``.

The review measured a ~5,000-token prompt at over 500 MB of peak memory (the prefill's attention
grows with the square of the prompt). Padded into a batch of short prompts, one long prompt
multiplied that by the batch size; now it is prefilled alone, and one past the budget gets 400.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from service.engines.local.engine import LocalEngine
from service.errors import ContextLengthError

from .helpers import make_request, reference
from .test_isolation import collect, submit_together

BUDGET = 128


@pytest.fixture(scope="module")
async def budget_engine(model_dir: Path) -> AsyncIterator[LocalEngine]:
    local = LocalEngine(
        model_dir,
        model_name="tiny",
        dtype="float32",
        device="cpu",
        max_batch_size=8,
        max_prefill_tokens=BUDGET,
    )
    local.load()
    yield local
    await local.close()


async def test_a_prompt_over_the_budget_gets_a_context_length_error(budget_engine: LocalEngine) -> None:
    request = make_request("word " * BUDGET, 4)
    with pytest.raises(ContextLengthError, match=f"at most {BUDGET} prompt tokens"):
        await anext(budget_engine.stream(request))


async def test_prefills_stay_within_the_budget_and_answers_are_exact(
    budget_engine: LocalEngine, monkeypatch: pytest.MonkeyPatch, reference_model: Any, tokenizer: Any
) -> None:
    assert budget_engine._scheduler is not None
    model = budget_engine._scheduler.model
    forward = model.forward
    prefills: list[tuple[int, int]] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        if kwargs["input_ids"].shape[1] > 1:
            prefills.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording)
    long = make_request("tell me " * 25, 4)
    shorts = [make_request(f"Hi {i}", 4) for i in range(3)]
    lengths = [len(budget_engine.encode(r.messages)) for r in [*shorts, long]]
    assert max(lengths[:3]) * 3 <= BUDGET < lengths[3] * 2 <= 2 * BUDGET  # the case this test is about
    jobs = submit_together(budget_engine, [*shorts, long])
    outcomes = await asyncio.gather(*(collect(job) for job in jobs))
    assert [rows * width <= BUDGET for rows, width in prefills] == [True] * len(prefills)
    assert prefills[0][0] == 3 and prefills[1] == (1, lengths[3])  # the shorts together, the long one alone
    for request, outcome in zip([*shorts, long], outcomes, strict=True):
        ids = budget_engine.encode(request.messages)
        assert outcome == {0: reference(reference_model, tokenizer, ids, 4)}
