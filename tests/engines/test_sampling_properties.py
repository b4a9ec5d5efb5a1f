"""The sampler over the whole space the request schema admits: it never fails a row.

Extreme floats (subnormal temperatures, the smallest repetition penalty), huge ``top_k``,
``min_p`` at 1, tiny ``top_p`` and any seed, on logits with huge magnitudes and -inf entries.
A security review found that ``temperature: 1e-300`` turned every logit into inf and the draw
raised, which failed every request in the batch.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain import SAMPLING_EPS, SamplingParams
from service.engines.local.sampling import SamplingError, make_generator, next_token
from service.planning import sampling_params
from service.protocol import MIN_REPETITION_PENALTY, ChatCompletionRequest

VOCAB = 64
EOS = torch.tensor([3])

# Every float the schema admits for each field, its edges and subnormals included.
temperatures = st.one_of(
    st.just(0.0), st.just(5e-324), st.just(1e-300), st.just(SAMPLING_EPS), st.floats(0.0, 2.0)
)
top_ps = st.one_of(st.just(5e-324), st.just(1.0), st.floats(0.0, 1.0, exclude_min=True))
top_ks = st.one_of(st.just(-1), st.just(0), st.just(1), st.integers(-1, 2**80))
min_ps = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))
penalties = st.one_of(st.just(MIN_REPETITION_PENALTY), st.just(10.0), st.floats(MIN_REPETITION_PENALTY, 10.0))
seeds = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))
logit_values = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.just(float("-inf")),
    st.floats(-50.0, 50.0, width=32),
)
rows = st.lists(logit_values, min_size=VOCAB, max_size=VOCAB).filter(
    lambda values: any(v != float("-inf") for v in values)
)


def schema_params(**fields: object) -> SamplingParams:
    """What the gateway makes of these fields: through the request schema and the planner's mapping."""
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], **fields}
    )
    return sampling_params(body, max_tokens=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    temperature=temperatures,
    top_p=top_ps,
    top_k=top_ks,
    min_p=min_ps,
    repetition_penalty=penalties,
    seed=seeds,
    values=rows,
    seen=st.lists(st.integers(0, VOCAB - 1), max_size=8),
    generated=st.integers(0, 3),
    min_tokens=st.integers(0, 3),
)
def test_any_admitted_parameters_draw_a_token(
    temperature: float,
    top_p: float,
    top_k: int,
    min_p: float,
    repetition_penalty: float,
    seed: int | None,
    values: list[float],
    seen: list[int],
    generated: int,
    min_tokens: int,
) -> None:
    params = schema_params(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    logits = torch.tensor(values, dtype=torch.float32)
    params = SamplingParams(**{**_fields(params), "min_tokens": min_tokens})
    token = next_token(
        logits.clone(),
        params,
        seen=torch.tensor(seen, dtype=torch.long),
        generated=generated,
        stop_token_ids=EOS,
        generator=make_generator(params, torch.device("cpu")),
    )
    assert 0 <= token < VOCAB
    if not params.greedy:  # a drawn token was a candidate: its logit was not -inf
        assert logits[token] != float("-inf")


def _fields(params: SamplingParams) -> dict[str, object]:
    return {name: getattr(params, name) for name in SamplingParams.__slots__}  # type: ignore[attr-defined]


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-10, SAMPLING_EPS / 2])
def test_temperatures_below_epsilon_are_greedy(temperature: float) -> None:
    params = SamplingParams(max_tokens=4, temperature=temperature, seed=0)
    assert params.greedy and make_generator(params, torch.device("cpu")) is None
    logits = torch.randn(VOCAB)
    token = next_token(
        logits.clone(), params, seen=torch.tensor([]), generated=5, stop_token_ids=EOS, generator=None
    )
    assert token == int(torch.argmax(logits))


def test_an_overflowing_penalty_still_draws() -> None:
    """Below the schema's bound, as an engine could still be handed it: the row draws, not raises."""
    params = SamplingParams(max_tokens=4, temperature=1.0, repetition_penalty=1e-300, seed=0)
    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    token = next_token(
        logits.clone(),
        params,
        seen=torch.tensor([1, 2]),
        generated=5,
        stop_token_ids=EOS,
        generator=make_generator(params, torch.device("cpu")),
    )
    assert token in (1, 2)  # the penalised (now +inf) tokens win


def test_a_row_with_no_candidate_raises_sampling_error() -> None:
    params = SamplingParams(max_tokens=4, temperature=1.0, seed=0)
    logits = torch.full((VOCAB,), float("nan"))
    with pytest.raises(SamplingError):
        next_token(logits, params, seen=torch.tensor([]), generated=5, stop_token_ids=EOS, generator=None)


@pytest.mark.parametrize(
    "fields",
    [
        {"repetition_penalty": 1e-300},
        {"repetition_penalty": 0.0},
        {"stop": ["x" * 513]},
        {"temperature": 2.5},
    ],
)
def test_the_schema_refuses_values_that_cannot_be_served(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        schema_params(**fields)


def test_a_top_k_beyond_any_vocabulary_is_off() -> None:
    assert schema_params(top_k=2**80).top_k == 0
