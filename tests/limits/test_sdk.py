"""The real openai SDK reads the refusals' headers: it waits retry-after-ms, and does not retry a budget."""

from __future__ import annotations

import time

import httpx2  # the openai SDK's HTTP client (a fork of httpx it depends on)
import openai
import pytest

from service.limits import Limits, MemoryLimiter, QuotaExceeded, RateLimited, Scope

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def client_of(
    limiter: MemoryLimiter, scopes: tuple[Scope, ...], seen: list[tuple[float, float]]
) -> openai.OpenAI:
    """An SDK client whose transport answers as the gateway will: 429 with the error's headers, or 200.

    ``seen`` gets each request's time, and the wait its refusal asked for (seconds; 0 when admitted).
    """

    def handle(request: httpx2.Request) -> httpx2.Response:
        try:
            ticket = limiter.admit_now(scopes, 100)
        except (RateLimited, QuotaExceeded) as exc:
            seen.append((time.monotonic(), int(exc.headers["retry-after-ms"]) / 1000))
            return httpx2.Response(exc.status_code, json=exc.envelope(), headers=exc.headers)
        seen.append((time.monotonic(), 0.0))
        return httpx2.Response(200, json=COMPLETION, headers=dict(ticket.headers()))

    http = httpx2.Client(transport=httpx2.MockTransport(handle))
    return openai.OpenAI(base_url="http://gateway/v1", api_key="sk-test", http_client=http, max_retries=2)


def ask(client: openai.OpenAI) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])


def test_the_sdk_waits_as_long_as_retry_after_ms_says() -> None:
    limiter = MemoryLimiter()
    scopes = (Scope("department", "acme/it", "acme", Limits(requests_per_minute=300)),)  # one per 0.2 s
    for _ in range(300):
        limiter.admit_now(scopes, 0)  # empty the bucket
    seen: list[tuple[float, float]] = []
    raw = client_of(limiter, scopes, seen).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert len(seen) == 2 and seen[1][1] == 0  # refused once, then admitted on the retry
    (refused, asked), (admitted, _) = seen
    assert 0.1 < asked <= 0.2
    assert (
        asked <= admitted - refused < asked + 0.3
    )  # it waited what retry-after-ms said, not its own backoff
    assert raw.headers["x-ratelimit-limit-requests"] == "300"
    assert raw.parse().choices[0].message.content == "ok"


def test_the_sdk_does_not_retry_an_exhausted_budget() -> None:
    limiter = MemoryLimiter()
    scopes = (Scope("tenant", "acme", "acme", Limits(tokens_per_day=150)),)
    seen: list[tuple[float, float]] = []
    client = client_of(limiter, scopes, seen)
    ask(client)
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client)
    assert len(seen) == 2  # no retry: x-should-retry false
    assert caught.value.code == "insufficient_quota" and caught.value.type == "insufficient_quota"
    assert "Token budget exhausted for tenant acme" in caught.value.message
