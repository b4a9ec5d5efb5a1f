"""Small-sample statistics for the evaluation: Wilson intervals, a difference of two rates, kappa.

With 40-90 prompts per set a point estimate alone misleads (95.6% of 45 is roughly 85-99%), so
every rate in the report carries a 95% Wilson score interval, and the gates read its bounds.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

Z95 = 1.959963984540054  # the normal quantile for a two-sided 95% interval


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for k successes in n trials (Wilson 1927; Newcombe 1998, method 3).

    Unlike the normal (Wald) interval it stays inside [0, 1] and is not empty at k = 0 or k = n.
    `k` may be fractional (a tie counted as half a win). n = 0 gives the uninformative (0, 1).
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"k={k} is not within 0..n={n}")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if k == 0 else max(0.0, centre - half)
    return low, 1.0 if k == n else min(1.0, centre + half)


def rate(k: float, n: int) -> dict[str, Any]:
    """`k` of `n` as a rate with its 95% Wilson interval, rounded for the report."""
    low, high = wilson(k, n)
    return {
        "k": k,
        "n": n,
        "rate": round(k / n, 4) if n else None,
        "low": round(low, 4),
        "high": round(high, 4),
    }


def difference(k1: float, n1: int, k2: float, n2: int) -> dict[str, Any]:
    """p1 - p2 with Newcombe's hybrid score interval (1998, method 10), built from both Wilson intervals.

    It treats the two rates as independent; on the same prompts (paired, positively correlated
    answers) that interval is wider than need be, so a gate on it errs on the cautious side.
    """
    p1, p2 = (k1 / n1 if n1 else 0.0), (k2 / n2 if n2 else 0.0)
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return {"diff": round(d, 4), "low": round(max(-1.0, low), 4), "high": round(min(1.0, high), 4)}


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> dict[str, Any]:
    """Percent agreement and Cohen's kappa of two raters' labels on the same items.

    Kappa corrects the agreement for what the raters' own label frequencies give by chance;
    when both always give the same single label, chance agreement is 1 and kappa is undefined
    (None) although agreement is 100%.
    """
    if len(a) != len(b):
        raise ValueError("both raters must label the same items")
    n = len(a)
    if n == 0:
        return {"n": 0, "agreement": None, "kappa": None}
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    labels = set(a) | set(b)
    expected = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in labels)
    kappa = None if expected == 1 else (observed - expected) / (1 - expected)
    return {"n": n, "agreement": round(observed, 4), "kappa": None if kappa is None else round(kappa, 4)}
