"""EOS in the Scheduler: a token of the greedy output is declared EOS, so that it surely comes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from service.domain import Delta, GenerationRequest
from service.engines.local.scheduler import Job, Scheduler

from .helpers import Choice, greedy_ids, make_request

MAX_TOKENS = 16


@pytest.fixture(scope="module")
def prompt_ids(tokenizer: Any) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a color."}], tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer.encode(text, add_special_tokens=False))


@pytest.fixture(scope="module")
def greedy(reference_model: Any, tokenizer: Any, prompt_ids: list[int]) -> list[int]:
    ids = greedy_ids(reference_model, tokenizer, prompt_ids, MAX_TOKENS)
    assert len(ids) == MAX_TOKENS
    return ids


@pytest.fixture(scope="module")
def eos_at(greedy: list[int]) -> int:
    """A position whose token does not occur before it: that token plays EOS."""
    return next(i for i in range(3, MAX_TOKENS - 4) if greedy[i] not in greedy[:i])


def start(model: Any, tokenizer: Any, eos: int) -> Scheduler:
    scheduler = Scheduler(
        model, tokenizer, eos_token_ids=[eos], pad_token_id=tokenizer.pad_token_id, max_batch_size=4
    )
    scheduler.start()
    return scheduler


@pytest.fixture(scope="module")
def scheduler(reference_model: Any, tokenizer: Any, greedy: list[int], eos_at: int) -> Iterator[Scheduler]:
    scheduler = start(reference_model, tokenizer, greedy[eos_at])
    yield scheduler
    scheduler.close()


async def run(scheduler: Scheduler, request: GenerationRequest, prompt_ids: list[int]) -> Choice:
    job = Job(request=request, prompt_ids=prompt_ids, loop=asyncio.get_running_loop())
    scheduler.submit(job)
    choice = Choice()
    async with asyncio.timeout(10):
        while choice.finish_reason is None:
            item = await job.queue.get()
            assert isinstance(item, Delta)
            choice.text += item.text
            choice.finish_reason = item.finish_reason
            choice.prompt_tokens, choice.completion_tokens = item.prompt_tokens, item.completion_tokens
    return choice


async def test_eos_stops_with_its_text_left_out(
    scheduler: Scheduler, tokenizer: Any, prompt_ids: list[int], greedy: list[int], eos_at: int
) -> None:
    choice = await run(scheduler, make_request("", MAX_TOKENS), prompt_ids)
    text = tokenizer.decode(greedy[:eos_at], skip_special_tokens=True)
    assert choice == Choice(text, "stop", len(prompt_ids), eos_at + 1)


async def test_ignore_eos_runs_to_max_tokens(
    scheduler: Scheduler, tokenizer: Any, prompt_ids: list[int], greedy: list[int]
) -> None:
    choice = await run(scheduler, make_request("", MAX_TOKENS, ignore_eos=True), prompt_ids)
    assert choice == Choice(tokenizer.decode(greedy, skip_special_tokens=True), "length", len(prompt_ids), 16)


async def test_min_tokens_forbids_eos_until_reached(
    scheduler: Scheduler, prompt_ids: list[int], eos_at: int
) -> None:
    min_tokens = eos_at + 2
    choice = await run(scheduler, make_request("", MAX_TOKENS, min_tokens=min_tokens), prompt_ids)
    if choice.finish_reason == "stop":
        assert choice.completion_tokens > min_tokens
    else:
        assert choice.completion_tokens == MAX_TOKENS


async def test_eos_as_the_very_first_token(
    reference_model: Any, tokenizer: Any, prompt_ids: list[int], greedy: list[int]
) -> None:
    scheduler = start(reference_model, tokenizer, greedy[0])
    try:
        choice = await run(scheduler, make_request("", MAX_TOKENS), prompt_ids)
        assert choice == Choice("", "stop", len(prompt_ids), 1)
        async with asyncio.timeout(5):  # the row leaves right after its last delta is sent
            while scheduler.running:
                await asyncio.sleep(0.01)
    finally:
        scheduler.close()
