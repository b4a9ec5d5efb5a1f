"""OpenAI's sampler fields in the embedded engine: penalties, logit_bias, logprobs, raw prompts."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessor, LogitsProcessorList

from service.domain import Delta, GenerationRequest, SamplingParams
from service.engines.local.engine import LocalEngine
from service.engines.local.scheduler import Job
from service.errors import InvalidRequestError

from .helpers import Choice, drain, greedy_ids, make_request, reference
from .test_isolation import collect, submit_together

PROMPT = "Once upon a time, in a small village by the sea,"


class OpenAIPenalties(LogitsProcessor):
    """The reference: OpenAI's formula over the completion's tokens, applied to ``generate``'s scores."""

    def __init__(self, start: int, presence: float, frequency: float, bias: dict[int, float]):
        self.start, self.presence, self.frequency, self.bias = start, presence, frequency, bias

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        counts = torch.bincount(input_ids[0, self.start :], minlength=scores.shape[-1]).float()
        scores[0] -= self.frequency * counts + self.presence * (counts > 0).float()
        for token, value in self.bias.items():
            scores[0, token] += value
        return scores


def token_of(tokenizer: Any, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) == 1
    return int(ids[0])


async def all_deltas(engine: LocalEngine, request: GenerationRequest) -> list[Delta]:
    return [delta async for delta in engine.stream(request)]


@pytest.mark.parametrize(
    ("presence", "frequency", "bias"),
    # A bias on " la" makes this random model repeat it, so that positive penalties have work to do
    [
        (0.0, 1.5, 12.0),
        (3.0, 0.0, 12.0),
        (0.5, 0.5, 10.0),
        (0.0, 1.5, 8.0),
        (-1.0, -0.5, 0.0),
        (0.0, 0.0, 12.0),
    ],
)
async def test_penalties_and_bias_follow_openais_formula(
    engine: LocalEngine, reference_model: Any, tokenizer: Any, presence: float, frequency: float, bias: float
) -> None:
    la = token_of(tokenizer, " la")
    request = make_request(
        "Repeat after me: la la la la la.",
        20,
        ignore_eos=True,
        presence_penalty=presence,
        frequency_penalty=frequency,
        logit_bias=((la, bias),) if bias else (),
    )
    prompt_ids = engine.encode(request.messages)
    processor = OpenAIPenalties(len(prompt_ids), presence, frequency, {la: bias} if bias else {})
    new = greedy_ids(
        reference_model, tokenizer, prompt_ids, 20, logits_processor=LogitsProcessorList([processor])
    )
    beside = engine.stream(make_request("Hi", 20))  # a plain greedy row in the same batch
    result, _ = await asyncio.gather(drain(engine.stream(request)), drain(beside))
    assert result[0].text == tokenizer.decode(new, skip_special_tokens=True)


async def test_logit_bias_of_100_forces_a_token(engine: LocalEngine, tokenizer: Any) -> None:
    la = token_of(tokenizer, " la")
    request = make_request("Say anything.", 8, ignore_eos=True, logit_bias=((la, 100.0),))
    assert (await drain(engine.stream(request)))[0].text == " la" * 8


async def test_frequency_penalty_stops_a_repetition(engine: LocalEngine, tokenizer: Any) -> None:
    la = token_of(tokenizer, " la")

    async def count(**sampling: Any) -> int:
        request = make_request("Say anything.", 12, ignore_eos=True, logit_bias=((la, 30.0),), **sampling)
        return (await drain(engine.stream(request)))[0].text.count(" la")

    assert await count() == 12
    assert 1 <= await count(frequency_penalty=10.0) <= 6
    assert await count(presence_penalty=100.0) == 1  # once seen, never again


@pytest.mark.parametrize("token", [-1, "vocab"])
async def test_logit_bias_outside_the_vocabulary_is_a_400(engine: LocalEngine, token: Any) -> None:
    bad = engine.vocab_size if token == "vocab" else token
    with pytest.raises(InvalidRequestError) as caught:
        await drain(engine.stream(make_request("Hi", 2, logit_bias=((bad, 1.0),))))
    assert caught.value.param == "logit_bias" and caught.value.status_code == 400


async def test_greedy_logprobs_are_the_models_raw_ones(
    engine: LocalEngine, reference_model: Any, tokenizer: Any
) -> None:
    request = make_request("Tell me about the weather.", 12, ignore_eos=True, logprobs=True, top_logprobs=5)
    prompt_ids = engine.encode(request.messages)
    with torch.inference_mode():
        out = reference_model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False, output_logits=True,
            return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    deltas = await all_deltas(engine, request)
    entries = [entry for delta in deltas for entry in delta.logprobs or []]
    assert len(entries) == deltas[-1].completion_tokens == 12
    for entry, raw in zip(entries, out.logits, strict=True):
        expected = torch.log_softmax(raw[0].float(), dim=-1)
        assert len(entry.top) == 5
        assert entry.token == entry.top[0].token and entry.logprob == entry.top[0].logprob  # greedy: the best
        assert [t.logprob for t in entry.top] == sorted((t.logprob for t in entry.top), reverse=True)
        assert entry.logprob == pytest.approx(float(expected.max()), abs=1e-4)
        assert entry.bytes == tuple(entry.token.encode())
    assert (
        "".join(delta.text for delta in deltas) == reference(reference_model, tokenizer, prompt_ids, 12).text
    )


async def test_sampled_logprobs_come_with_their_text(engine: LocalEngine) -> None:
    """Each delta carries the entries of the tokens it releases; a stop string's tail goes with the finish."""
    plain = make_request("Say something.", 24, temperature=1.0, seed=5, logprobs=True)
    full = "".join(d.text for d in await all_deltas(engine, plain))
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    deltas = await all_deltas(engine, replace(plain, sampling=replace(plain.sampling, stop=(stop,))))
    entries = [entry for delta in deltas for entry in delta.logprobs or []]
    assert len(entries) == deltas[-1].completion_tokens
    assert all(entry.logprob <= 0 and entry.top == () for entry in entries)
    assert all(delta.logprobs for delta in deltas[:-1])  # a delta with text has the tokens behind it
    released = "".join(entry.token for delta in deltas[:-1] for entry in delta.logprobs or [])
    assert "".join(d.text for d in deltas[:-1]).startswith(released)


async def test_rows_without_logprobs_get_none(engine: LocalEngine) -> None:
    deltas = await all_deltas(engine, make_request("Hi", 4))
    assert all(delta.logprobs is None and delta.prompt_logprobs is None for delta in deltas)


def raw_prompt(text: str, max_tokens: int, *, n: int = 1, **sampling: Any) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest("raw", [], SamplingParams(max_tokens=max_tokens, **sampling), n=n, prompt=text)


async def test_a_raw_prompt_is_encoded_as_it_is(
    engine: LocalEngine, reference_model: Any, tokenizer: Any
) -> None:
    prompt_ids = tokenizer(PROMPT).input_ids
    result = await drain(engine.stream(raw_prompt(PROMPT, 10)))
    assert result == {0: reference(reference_model, tokenizer, prompt_ids, 10)}


@pytest.mark.parametrize("top", [0, 3])
async def test_prompt_logprobs_are_each_prompt_tokens(
    engine: LocalEngine, reference_model: Any, tokenizer: Any, top: int
) -> None:
    prompt_ids = tokenizer(PROMPT).input_ids
    request = raw_prompt(PROMPT, 3, n=2, prompt_logprobs=True, logprobs=True, top_logprobs=top)
    deltas = await all_deltas(engine, request)
    firsts = {d.index: d for d in reversed(deltas)}
    with torch.inference_mode():
        expected = torch.log_softmax(reference_model(torch.tensor([prompt_ids])).logits[0].float(), dim=-1)
    for first in firsts.values():
        entries = first.prompt_logprobs
        assert entries is not None and len(entries) == len(prompt_ids) and entries[0] is None
        for position, entry in enumerate(entries[1:], start=1):
            assert entry is not None and entry.token == tokenizer.decode([prompt_ids[position]])
            assert entry.logprob == pytest.approx(
                float(expected[position - 1, prompt_ids[position]]), abs=1e-4
            )
            assert len(entry.top) == top
            if top:
                assert entry.top[0].logprob == pytest.approx(float(expected[position - 1].max()), abs=1e-4)
    assert sum(d.prompt_logprobs is not None for d in deltas) == 2  # once per choice, on its first delta


async def test_a_prompt_logprobs_job_is_prefilled_alone(
    engine: LocalEngine, reference_model: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = engine._scheduler
    assert scheduler is not None
    forward, prefills = scheduler.model.forward, []

    def counting(*args: Any, **kwargs: Any) -> Any:
        if kwargs["input_ids"].shape[1] > 1:
            prefills.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(scheduler.model, "forward", counting)
    loop = asyncio.get_running_loop()
    chat = make_request("Tell me about the weather.", 6)
    requests = [chat, raw_prompt(PROMPT, 4, prompt_logprobs=True), chat, chat]
    jobs = [
        Job(request=r, prompt_ids=engine.encode_request(r), loop=loop)  # queued together: one turn
        for r in requests
    ]
    with scheduler._wake:
        for job in jobs:
            scheduler.submit(job)
    outcomes = await asyncio.gather(*(collect(job) for job in jobs))
    assert prefills[:3] == [1, 1, 2]
    assert outcomes[1] == {0: reference(reference_model, tokenizer, tokenizer(PROMPT).input_ids, 4)}
    assert outcomes[0] == outcomes[2] == outcomes[3]


openai_fields: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.one_of(st.just(0.0), st.floats(0.0, 2.0)),
        "presence_penalty": st.floats(-2.0, 2.0),
        "frequency_penalty": st.floats(-2.0, 2.0),
        "logit_bias": st.lists(
            st.tuples(st.integers(0, 49151), st.floats(-100.0, 100.0)), max_size=5, unique_by=lambda p: p[0]
        ).map(tuple),
        "logprobs": st.booleans(),
        "top_logprobs": st.integers(0, 20),
        "seed": st.integers(0, 2**32),
    },
)


@pytest.fixture
def neighbour(engine: LocalEngine, reference_model: Any, tokenizer: Any) -> tuple[GenerationRequest, Choice]:
    request = make_request("Tell me about the weather.", 12, ignore_eos=True)
    return request, reference(reference_model, tokenizer, engine.encode(request.messages), 12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sampling=openai_fields, n=st.integers(1, 2))
def test_any_openai_sampling_serves_beside_a_victim(
    engine: LocalEngine, neighbour: tuple[GenerationRequest, Choice], sampling: dict[str, Any], n: int
) -> None:
    """Property: penalties, biases and logprobs never break a row, nor disturb the row beside it."""
    request, expected = neighbour
    other = make_request("Anything goes.", 6, n=n, **sampling)

    async def both() -> tuple[dict[int, Choice], dict[int, Choice]]:
        jobs = submit_together(engine, [request, other])
        return await asyncio.gather(collect(jobs[0]), collect(jobs[1]))  # type: ignore[return-value]

    victim_out, other_out = asyncio.run(both())
    assert victim_out == {0: expected}
    assert sorted(other_out) == list(range(n))
    assert all(c.finish_reason in ("stop", "length") for c in other_out.values())
