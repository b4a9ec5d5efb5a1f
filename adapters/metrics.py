"""Text metrics for the evaluation: ROUGE-L and win rates."""

from __future__ import annotations

import re
from collections.abc import Sequence

_TOKEN = re.compile(r"\w+", re.UNICODE)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (one row of the DP table at a time)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens (as rouge-score does without stemming)."""
    pred, ref = _tokens(prediction), _tokens(reference)
    if not pred or not ref:
        return 0.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def win_rate(preferences: Sequence[float]) -> dict[str, float]:
    """Preferences in [0, 1] (1: the first answer wins, 0.5: a tie) as wins, ties, losses and a rate.

    The rate counts a tie as half a win.
    """
    n = len(preferences)
    wins = sum(1 for p in preferences if p > 0.5)
    losses = sum(1 for p in preferences if p < 0.5)
    ties = n - wins - losses
    rate = (wins + 0.5 * ties) / n if n else 0.0
    return {"win_rate": round(rate, 4), "wins": wins, "ties": ties, "losses": losses, "n": n}
