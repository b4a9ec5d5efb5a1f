"""LocalEngine + Scheduler: batched greedy output equals sequential ``generate`` in float32."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.domain import Delta
from service.engines.local.engine import LocalEngine
from service.errors import ContextLengthError, EngineUnavailableError
from tests.gates import GatedScheduler

from .helpers import Choice, drain, make_request, reference

PROMPTS = [
    ("Hi", 12),
    ("What is the capital of France?", 20),
    ("Write a long story about a dragon who learned to bake bread in the mountains, with flour.", 7),
    (
        "Name three primes, then explain why each is prime, in one clear sentence each, with an example.",
        16,
    ),
]


def expected(engine: LocalEngine, model: Any, tokenizer: Any, content: str, max_tokens: int) -> Choice:
    request = make_request(content, max_tokens)
    return reference(model, tokenizer, engine.encode(request.messages), max_tokens)


async def running(engine: LocalEngine) -> int:
    return int((await engine.health()).extra["running"])


async def wait_idle(engine: LocalEngine, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while await running(engine):
            await asyncio.sleep(0.01)


async def test_concurrent_prompts_of_different_lengths_match_generate(
    engine: LocalEngine, reference_model: Any, tokenizer: Any
) -> None:
    lengths = {len(engine.encode(make_request(c, 1).messages)) for c, _ in PROMPTS}
    assert len(lengths) == len(PROMPTS)
    results = await asyncio.gather(*(drain(engine.stream(make_request(c, m))) for c, m in PROMPTS))
    for (content, max_tokens), result in zip(PROMPTS, results, strict=True):
        assert result == {0: expected(engine, reference_model, tokenizer, content, max_tokens)}


async def test_requests_joining_a_decoding_batch_match_generate(
    engine: LocalEngine, held: GatedScheduler, reference_model: Any, tokenizer: Any
) -> None:
    log: list[tuple[str, Delta]] = []
    long = engine.stream(make_request("Tell me everything about the sea.", 160))
    first = await anext(long)
    assert first.finish_reason is None and first.text
    log.append(("long", first))
    joining = [asyncio.ensure_future(drain(engine.stream(make_request(c, m)), log, c)) for c, m in PROMPTS]
    assert await asyncio.to_thread(held.holding.wait, 10), "the long request was never held"
    async with asyncio.timeout(10):  # all queued while the long one is held: they join it mid-answer
        while held.waiting < len(PROMPTS):
            await asyncio.sleep(0.01)
    held.gate.set()
    results = await asyncio.gather(drain(long, log, "long"), *joining)
    long_result = results[0][0]
    long_result.text = first.text + long_result.text
    assert long_result == expected(
        engine, reference_model, tokenizer, "Tell me everything about the sea.", 160
    )
    for (content, max_tokens), result in zip(PROMPTS, results[1:], strict=True):
        assert result == {0: expected(engine, reference_model, tokenizer, content, max_tokens)}
    names = [name for name, _ in log]
    assert names.index(PROMPTS[0][0]) < len(names) - 1 - names[::-1].index("long"), "they did not overlap"


async def test_repetition_penalty_matches_generate(
    engine: LocalEngine, reference_model: Any, tokenizer: Any
) -> None:
    # Below 1 the penalty favours tokens already seen: this random model never repeats a token of
    # its own accord, so a penalty above 1 would change nothing and prove nothing.
    request = make_request("Repeat after me: la la la la la.", 16, repetition_penalty=0.6)
    prompt_ids = engine.encode(request.messages)
    plain = reference(reference_model, tokenizer, prompt_ids, 16)
    penalised = reference(reference_model, tokenizer, prompt_ids, 16, repetition_penalty=0.6)
    assert penalised.text != plain.text
    other = engine.stream(make_request("Hi", 16))  # batched beside a plain greedy row
    results = await asyncio.gather(drain(engine.stream(request)), drain(other))
    assert results[0] == {0: penalised}


async def test_length_finish_counts_tokens(engine: LocalEngine, tokenizer: Any) -> None:
    request = make_request("Count to ten.", 9)
    result = await drain(engine.stream(request))
    prompt_tokens = len(engine.encode(request.messages))
    assert result[0].finish_reason == "length"
    assert (result[0].prompt_tokens, result[0].completion_tokens) == (prompt_tokens, 9)


async def test_stop_string_ends_the_choice_before_it(engine: LocalEngine) -> None:
    full = (await drain(engine.stream(make_request("Say something.", 24))))[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert len(stop) == 3
    result = (await drain(engine.stream(make_request("Say something.", 24, stop=(stop,)))))[0]
    assert result.finish_reason == "stop"
    assert result.text == full[: full.index(stop)]


async def test_n_choices_with_a_seed_differ_and_reproduce(engine: LocalEngine) -> None:
    def request(seed: int) -> Any:
        return make_request("Pick a random word.", 12, n=2, temperature=1.0, seed=seed)

    first = await drain(engine.stream(request(42)))
    assert sorted(first) == [0, 1]
    assert all(c.finish_reason is not None for c in first.values())
    assert first[0].text != first[1].text
    assert await drain(engine.stream(request(42))) == first
    assert (await drain(engine.stream(request(43))))[0].text != first[0].text


async def test_closing_the_stream_drops_the_row(engine: LocalEngine, held: GatedScheduler) -> None:
    stream = engine.stream(make_request("Write a very long essay.", 500))
    first = await anext(stream)
    assert first.finish_reason is None
    assert await asyncio.to_thread(held.holding.wait, 10)  # held: it cannot finish on its own
    assert await running(engine) == 1
    await stream.aclose()
    await wait_idle(engine)


@pytest.mark.parametrize(("content", "max_tokens"), [("word " * 1100, 1), ("Hi", 1024)])
async def test_too_long_request_raises_and_the_engine_keeps_serving(
    engine: LocalEngine, content: str, max_tokens: int
) -> None:
    assert engine.max_context == 1024
    with pytest.raises(ContextLengthError):
        await drain(engine.stream(make_request(content, max_tokens)))
    result = await drain(engine.stream(make_request("Hi", 3)))
    assert result[0].finish_reason == "length" and result[0].completion_tokens == 3


async def test_an_engine_not_loaded_refuses_requests(model_dir: Any) -> None:
    idle = LocalEngine(model_dir, model_name="tiny")
    assert not (await idle.health()).ready
    with pytest.raises(EngineUnavailableError):
        await drain(idle.stream(make_request("Hi", 1)))
