"""The embedded engine under one tenant's pathological requests: bounded, refused with 400, others served.

Each test here failed before its fix:

- a schema of ~40 KB (a thousand ``patternProperties``) took llguidance 12 minutes to compile,
  on a thread of the pool the gateway tokenises on; a few of them stalled every request;
- a grammar whose lexer explodes (a regex that needs a state per position) grew without bound
  while decoding (250,000 states of ~1-2 kB by default);
- logprob entries of tokens that a stop string cut from the answer were still sent;
- the scheduler took jobs first come, first served: a completions request of many prompts (a job
  each) queued every later request behind all of its prompts.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest

from service.domain import Constraint, GenerationRequest
from service.engines.local.engine import LocalEngine
from service.engines.local.grammar import COMPILE_SECONDS, GrammarCache, GrammarLimitError
from service.errors import EngineUnavailableError, InvalidRequestError

from .helpers import drain, make_request
from .test_local_grammar import PERSON, constrained


def slow_schema(variant: int = 0) -> dict[str, Any]:
    """~40 KB; llguidance 1.9 builds its grammar in ~12 minutes (the patterns' pairwise checks)."""
    patterns = {f"^v{variant}p{i}[a-z]{{3,9}}$": {"type": "integer"} for i in range(1000)}
    return {"type": "object", "patternProperties": patterns}


EXPLODING = {"type": "string", "pattern": "^(.*a.{20}|.*b.{21}|.*c.{22})$"}  # a lexer state per position


async def max_loop_lag(work: Any) -> tuple[float, Any]:
    """The longest the event loop went without running this task while ``work`` ran, and its outcome."""
    task = asyncio.ensure_future(work)
    lag = 0.0
    while not task.done():
        before = time.monotonic()
        await asyncio.sleep(0.01)
        lag = max(lag, time.monotonic() - before - 0.01)
    return lag, task.exception() or task.result()


async def test_a_schema_that_compiles_for_minutes_is_refused_within_the_limit(engine: LocalEngine) -> None:
    started = time.monotonic()
    lag, outcome = await max_loop_lag(
        asyncio.wait_for(drain(engine.stream(constrained("JSON.", slow_schema()))), 60)
    )
    assert isinstance(outcome, InvalidRequestError), outcome
    assert outcome.param == "response_format" and "longer than" in outcome.message
    assert time.monotonic() - started < COMPILE_SECONDS + 10
    assert lag < 0.5
    started = time.monotonic()  # remembered: refused again at once
    with pytest.raises(InvalidRequestError):
        await drain(engine.stream(constrained("JSON.", slow_schema())))
    assert time.monotonic() - started < 0.5
    choices = await drain(engine.stream(constrained("JSON.", PERSON)))  # the engine serves on
    assert choices[0].finish_reason == "stop"


async def test_slow_schemas_do_not_stall_other_requests(engine: LocalEngine) -> None:
    """More slow compiles than the shared thread pool has threads: a free request is still served.

    Compiles run on their own thread, one at a time, each stopped at COMPILE_SECONDS; the
    threads the engine tokenises on never wait for them. A schema that waits too long for its
    turn is a 503, never a stall.
    """
    slow = [
        asyncio.ensure_future(drain(engine.stream(constrained("JSON.", slow_schema(k))))) for k in range(8)
    ]
    await asyncio.sleep(0.2)
    started = time.monotonic()
    free = await asyncio.wait_for(drain(engine.stream(make_request("Hello there.", 4))), 30)
    assert free[0].finish_reason is not None
    assert time.monotonic() - started < 5
    outcomes = await asyncio.wait_for(asyncio.gather(*slow, return_exceptions=True), 120)
    assert all(isinstance(o, InvalidRequestError | EngineUnavailableError) for o in outcomes), outcomes


def test_a_grammar_that_explodes_while_decoding_stops_at_the_lexer_limit(tokenizer: Any) -> None:
    cache = GrammarCache(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
    import torch

    row = cache.get(Constraint("json_schema", EXPLODING)).row()
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(GrammarLimitError, match="too many"):
        for _ in range(500):
            logits = torch.zeros(len(tokenizer))
            row.apply(logits)
            allowed = torch.isfinite(logits).nonzero().view(-1)
            row.accept(int(allowed[torch.randint(len(allowed), (1,), generator=generator)]))
    cache.close()


@pytest.mark.parametrize("stream_n", [1, 2])
async def test_a_grammar_over_its_limits_is_the_requests_400_not_a_500(
    engine: LocalEngine, stream_n: int
) -> None:
    """Sampled freely, the tiny model's tokens drive the exploding pattern into its limit."""
    request = constrained("Text.", EXPLODING, 200, n=stream_n, temperature=1.0, seed=0)
    with pytest.raises(InvalidRequestError) as caught:
        await drain(engine.stream(request))
    assert caught.value.param == "response_format" and "limits" in caught.value.message
    assert (await drain(engine.stream(make_request("Hi", 2))))[0].finish_reason is not None


# -- logprobs and stop strings -------------------------------------------------------------------


async def tokens_and_text(engine: LocalEngine, request: GenerationRequest) -> tuple[list[str], str]:
    tokens, text = [], ""
    async for delta in engine.stream(request):
        text += delta.text
        tokens += [entry.token for entry in delta.logprobs or ()]
    return tokens, text


@pytest.mark.parametrize("cut", ["token", "mid-token", "two tokens"])
async def test_no_logprobs_for_text_a_stop_string_cut(engine: LocalEngine, cut: str) -> None:
    free, text = await tokens_and_text(engine, make_request("Tell me a story.", 12, logprobs=True))
    assert "".join(free) == text and len(free) == 12
    pick = next(i for i in range(2, 10) if len(free[i].strip()) >= 3 and text.count(free[i]) == 1)
    before = "".join(free[:pick])
    stop = {"token": free[pick], "mid-token": free[pick][1:], "two tokens": free[pick] + free[pick + 1]}[cut]
    tokens, stopped = await tokens_and_text(
        engine, make_request("Tell me a story.", 12, logprobs=True, stop=(stop,))
    )
    assert stopped == text[: text.index(stop)]
    expected = free[: pick + 1] if cut == "mid-token" else free[:pick]  # a token whose text is partly in
    assert tokens == expected, (stopped, before)


# -- one request of many prompts does not hold the queue -----------------------------------------


async def test_a_request_of_many_prompts_does_not_queue_others_behind_all_of_them(
    engine: LocalEngine,
) -> None:
    """/v1/completions runs each of up to 256 prompts as its own job (ids ``<request>-<i>``). Taken
    first come, first served, a request that came after them waited for every one; taken by the
    request with the fewest rows running, it joins within a turn or two."""
    scheduler = engine._scheduler
    assert scheduler is not None
    finished: list[str] = []

    async def run(request: GenerationRequest) -> None:
        await drain(engine.stream(request))
        finished.append(request.request_id)

    big = [replace(make_request(f"Prompt {i}.", 6, n=8), request_id=f"cmpl-big-{i}") for i in range(24)]
    tasks = [asyncio.ensure_future(run(request)) for request in big]
    while scheduler.waiting < 20:  # the big request is queued (its first jobs may be running)
        await asyncio.sleep(0.005)
    small = make_request("Hello.", 6)
    tasks.append(asyncio.ensure_future(run(small)))
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    assert finished.index(small.request_id) <= 4, finished
