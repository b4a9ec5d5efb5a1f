"""Over HTTP: no request body, valid or not, gets a 5xx or disturbs another tenant's stream.

The review's attack: with any valid key, ``{"temperature": 1e-300, "max_tokens": 1}`` beside
running streams. Before the fix the attacker got a 500 and every victim stream ended with
``internal_error`` (18 of 18).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.helpers import CHAT_URL, chat_body, sse_events

VICTIM_TOKENS = 40


async def victim_stream(client: httpx.AsyncClient, started: asyncio.Event) -> list[Any]:
    body = chat_body(max_tokens=VICTIM_TOKENS, ignore_eos=True, temperature=0, stream=True)
    async with client.stream("POST", CHAT_URL, json=body) as response:
        assert response.status_code == 200
        text = ""
        async for chunk in response.aiter_text():
            text += chunk
            started.set()
    return sse_events(text)


def assert_whole(events: list[Any]) -> None:
    """A victim stream that ended normally: no error event, finished by length, then [DONE]."""
    assert events[-1] == "[DONE]"
    assert not [e for e in events[:-1] if "error" in e], events
    reasons = [c["finish_reason"] for e in events[:-1] for c in e["choices"] if c["finish_reason"]]
    assert reasons == ["length"]


ATTACKS = [
    {"temperature": 1e-300, "max_tokens": 1},
    {"temperature": 5e-324, "max_tokens": 4},
    {"temperature": 1.0, "repetition_penalty": 0.01, "max_tokens": 4},
    {"temperature": 2.0, "top_p": 5e-324, "min_p": 1.0, "top_k": 10**30, "max_tokens": 4},
]


@pytest.mark.parametrize("attack", ATTACKS)
async def test_an_extreme_but_valid_request_is_served_and_disturbs_no_stream(
    client: httpx.AsyncClient, attack: dict[str, Any]
) -> None:
    started = [asyncio.Event() for _ in range(3)]
    victims = [asyncio.create_task(victim_stream(client, event)) for event in started]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), 30)
    attacker = await client.post(CHAT_URL, json=chat_body(**attack))
    assert attacker.status_code == 200, attacker.text
    for events in await asyncio.gather(*victims):
        assert_whole(events)


async def test_a_penalty_that_would_overflow_is_refused_with_400(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT_URL, json=chat_body(repetition_penalty=1e-300))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "repetition_penalty"


# Each sampling field: mostly values the schema admits (edges and subnormals first), sometimes any
# JSON value at all. The schema refuses a value (400) or the engine serves it (200); never a 5xx.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
)


def sampling_fields(or_any: bool) -> st.SearchStrategy[dict[str, Any]]:
    """The sampling fields with values the schema admits; with ``or_any``, sometimes any JSON value."""

    def value(admitted: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(admitted, admitted, admitted, json_scalars) if or_any else admitted

    return st.fixed_dictionaries(
        {"max_tokens": value(st.integers(1, 4))},
        optional={
            "temperature": value(
                st.one_of(st.sampled_from([0.0, 5e-324, 1e-300, 1e-6, 1e-5, 2.0]), st.floats(0.0, 2.0))
            ),
            "top_p": value(unit(5e-324, 1e-300, 1.0).filter(lambda p: p > 0)),
            "min_p": value(unit(0.0, 5e-324, 1.0)),
            "top_k": value(st.one_of(st.sampled_from([-1, 0, 1, 2**31, 2**63]), st.integers(-1, 2**70))),
            "repetition_penalty": value(st.one_of(st.sampled_from([0.01, 10.0]), st.floats(0.01, 10.0))),
            "min_tokens": value(st.integers(0, 4)),
            "seed": value(st.sampled_from([-(2**63), 2**63 - 1, 0])),
            "n": value(st.integers(1, 3)),
            "ignore_eos": value(st.booleans()),
            "stop": value(st.lists(st.text(max_size=6), max_size=3)),
        },
    )


def unit(*edges: float) -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(edges), st.floats(0.0, 1.0))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=sampling_fields(or_any=False))
async def test_every_admitted_sampling_value_is_served(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    if body.get("min_tokens", 0) > body["max_tokens"]:
        body["min_tokens"] = body["max_tokens"]  # the one cross-field rule (400 otherwise)
    response = await client.post(CHAT_URL, json=chat_body(**body))
    assert response.status_code == 200, response.text


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=sampling_fields(or_any=True))
async def test_no_request_body_gets_a_5xx(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await client.post(CHAT_URL, content=json.dumps(chat_body(**body)))
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]["type"] == "invalid_request_error"
