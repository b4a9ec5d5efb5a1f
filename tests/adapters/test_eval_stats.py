"""Wilson intervals, the difference of two rates and Cohen's kappa, against published values."""

from __future__ import annotations

import pytest

from adapters.stats import cohen_kappa, difference, rate, wilson


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [  # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombe(k: int, n: int, low: float, high: float) -> None:
    got = wilson(k, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_edges_and_errors() -> None:
    assert wilson(10, 10)[1] == 1.0 and wilson(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(4.5, 9)[0] < 0.5 < wilson(4.5, 9)[1]  # a tie counted as half a win
    with pytest.raises(ValueError):
        wilson(11, 10)
    r = rate(43, 45)
    assert r["rate"] == 0.9556 and r["low"] < 0.86 and r["high"] > 0.98  # "95.6% of 45 is ~85-99%"


def test_difference_matches_newcombe_method_10() -> None:
    # Newcombe (1998b), Statistics in Medicine 17:873, Table II: 56/70 - 48/80 and 9/10 - 3/10
    assert difference(56, 70, 48, 80) == {"diff": 0.2, "low": 0.0524, "high": 0.3339}
    assert difference(9, 10, 3, 10) == {"diff": 0.6, "low": 0.1705, "high": 0.809}


def test_cohen_kappa() -> None:
    # observed 4/5; chance (2*2 + 2*1 + 1*2)/25 = 8/25; kappa (0.8 - 0.32) / 0.68
    assert cohen_kappa(list("aabbc"), list("aabcc")) == {"n": 5, "agreement": 0.8, "kappa": 0.7059}
    assert cohen_kappa(["tie"] * 3, ["tie"] * 3)["kappa"] is None  # all one label: chance is 1
    assert cohen_kappa(["win", "loss"], ["loss", "win"])["kappa"] == -1.0
    with pytest.raises(ValueError):
        cohen_kappa(["a"], [])
