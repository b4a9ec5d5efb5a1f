"""OpenAI's header formats: durations like ``6m0s``, the x-ratelimit set, Retry-After."""

from __future__ import annotations

import pytest

from service.limits.headers import Window, duration, rate_headers, retry_headers


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (0.0004, "1ms"),
        (0.02, "20ms"),
        (0.25, "250ms"),
        (1, "1s"),
        (8.64, "8.64s"),
        (59.9991, "1m0s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (90.5, "1m30.5s"),
        (3723, "1h2m3s"),
        (86400, "24h0m0s"),
    ],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_window_remaining_and_reset() -> None:
    assert Window(60, 59.0).remaining == 59 and Window(60, 59.0).reset == pytest.approx(1.0)
    assert Window(60, 0.5).remaining == 0
    assert Window(60, -30.0).remaining == 0 and Window(60, -30.0).reset == pytest.approx(90.0)
    assert Window(1000, 1000.0).reset == 0.0


def test_rate_headers() -> None:
    assert rate_headers(Window(60, 59.0), Window(10_000, 4000.0)) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": "4000",
        "x-ratelimit-reset-tokens": "36s",
    }
    assert rate_headers(None, None) == {}
    assert set(rate_headers(None, Window(5, 5.0))) == {
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    }


def test_retry_headers() -> None:
    assert retry_headers(0.2) == {"retry-after": "1", "retry-after-ms": "200"}
    assert retry_headers(2.5, retry=False) == {
        "retry-after": "3",
        "retry-after-ms": "2500",
        "x-should-retry": "false",
    }
