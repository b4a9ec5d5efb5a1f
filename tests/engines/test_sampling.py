"""Sampling: one row of logits to one token, as vLLM's parameters say."""

from __future__ import annotations

import pytest
import torch

from service.domain import SamplingParams
from service.engines.local.sampling import (
    apply_repetition_penalty,
    filter_top_k_top_p_min_p,
    make_generator,
    needs_processing,
    next_token,
)

EOS = torch.tensor([3])
NO_IDS = torch.tensor([], dtype=torch.long)


def pick(
    logits: torch.Tensor,
    params: SamplingParams,
    *,
    seen: torch.Tensor = NO_IDS,
    generated: int = 5,
    generator: torch.Generator | None = None,
) -> int:
    return next_token(
        logits.clone(), params, seen=seen, generated=generated, stop_token_ids=EOS, generator=generator
    )


def sampled(logits: torch.Tensor, params: SamplingParams, draws: int = 200) -> set[int]:
    generator = make_generator(params, torch.device("cpu"))
    return {pick(logits, params, generator=generator) for _ in range(draws)}


LOGITS = torch.tensor([1.0, 3.0, 2.5, -1.0, 0.5, 2.9])


def test_greedy_is_argmax() -> None:
    params = SamplingParams(max_tokens=4, temperature=0.0)
    assert params.greedy and not needs_processing(params, generated=0)
    for _ in range(20):
        logits = torch.randn(50)
        assert pick(logits, params) == int(torch.argmax(logits))


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0, 4.0])
    apply_repetition_penalty(logits, torch.tensor([0, 1, 1]), 2.0)
    assert logits.tolist() == [1.0, -4.0, 1.0, 4.0]


def test_repetition_penalty_changes_the_greedy_choice() -> None:
    params = SamplingParams(max_tokens=4, temperature=0.0, repetition_penalty=1.5)
    assert needs_processing(params, generated=10)
    assert pick(LOGITS, params, seen=torch.tensor([1, 1])) == 5  # 3.0 / 1.5 = 2.0 < 2.9


def test_min_tokens_masks_eos_until_enough_tokens() -> None:
    logits = torch.zeros(6)
    logits[3] = 10.0  # EOS would win
    params = SamplingParams(max_tokens=8, temperature=0.0, min_tokens=2)
    assert needs_processing(params, generated=1) and not needs_processing(params, generated=2)
    assert pick(logits, params, generated=0) != 3
    assert pick(logits, params, generated=1) != 3
    assert pick(logits, params, generated=2) == 3
    sampling = SamplingParams(max_tokens=8, min_tokens=1, seed=0)
    generator = make_generator(sampling, torch.device("cpu"))
    assert 3 not in {pick(logits, sampling, generated=0, generator=generator) for _ in range(200)}
    assert pick(logits, sampling, generated=1, generator=generator) == 3


def test_top_k_one_is_greedy() -> None:
    params = SamplingParams(max_tokens=4, temperature=1.5, top_k=1, seed=1)
    assert sampled(LOGITS, params) == {1}


def test_top_k_keeps_the_k_best() -> None:
    assert sampled(LOGITS, SamplingParams(max_tokens=4, top_k=3, seed=2), draws=400) == {1, 2, 5}


def test_tiny_top_p_keeps_only_the_top_token() -> None:
    assert sampled(LOGITS, SamplingParams(max_tokens=4, top_p=1e-6, seed=3)) == {1}


def test_top_p_keeps_the_token_that_crosses_it() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    filter_top_k_top_p_min_p(logits, 0, 0.7, 0.0)
    assert torch.isfinite(logits).tolist() == [True, True, False, False]


def test_min_p_drops_tokens_below_a_fraction_of_the_best() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    filter_top_k_top_p_min_p(logits, 0, 1.0, 0.5)  # keep p >= 0.25
    assert torch.isfinite(logits).tolist() == [True, True, False, False]
    assert sampled(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])), SamplingParams(4, min_p=0.5, seed=4)) == {
        0,
        1,
    }


@pytest.mark.parametrize("seed", [0, 7, 12345])
def test_fixed_seed_repeats_the_same_draws(seed: int) -> None:
    params = SamplingParams(max_tokens=4, temperature=1.0, seed=seed)
    logits = torch.randn(1000)

    def draws() -> list[int]:
        generator = make_generator(params, torch.device("cpu"))
        return [pick(logits, params, generator=generator) for _ in range(30)]

    first = draws()
    assert first == draws()
    assert len(set(first)) > 1  # a real draw, not a constant


def test_no_generator_for_greedy() -> None:
    assert make_generator(SamplingParams(max_tokens=1, temperature=0.0), torch.device("cpu")) is None
