"""Chat completions on the tiny model over httpx's ASGI transport: shapes, streaming, parameters."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.helpers import CHAT_URL, chat_body, sse_events
from tests.conftest import TINY_MODEL


async def chat(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post(CHAT_URL, json=chat_body(**fields))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def stream_events(client: httpx.AsyncClient, **fields: Any) -> list[Any]:
    response = await client.post(CHAT_URL, json=chat_body(stream=True, **fields))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return sse_events(response.text)


def streamed_text(events: list[Any], index: int = 0) -> str:
    return "".join(
        c["delta"].get("content", "") for e in events[:-1] for c in e["choices"] if c["index"] == index
    )


async def test_non_streaming_shape(client: httpx.AsyncClient) -> None:
    body = await chat(client, n=2, max_tokens=3, ignore_eos=True)
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == TINY_MODEL
    assert isinstance(body["created"], int)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for choice in body["choices"]:
        assert choice["message"]["role"] == "assistant"
        assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
        assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] == 2 * 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("include_usage", [False, True])
async def test_streaming_framing(client: httpx.AsyncClient, include_usage: bool) -> None:
    n, max_tokens = 2, 4
    events = await stream_events(
        client, n=n, max_tokens=max_tokens, ignore_eos=True, stream_options={"include_usage": include_usage}
    )
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["model"] for c in chunks} == {TINY_MODEL}
    if include_usage:
        *chunks, usage_chunk = chunks
        assert usage_chunk["choices"] == []
        usage = usage_chunk["usage"]
        assert usage["completion_tokens"] == n * max_tokens
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > n * max_tokens
        assert all(c["usage"] is None for c in chunks)
    else:
        assert all("usage" not in c for c in chunks)
    for index in range(n):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert all(len(c["choices"]) == 1 for c in chunks)
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert mine[-1]["delta"] == {} and mine[-1]["finish_reason"] == "length"
        middle = mine[1:-1]
        assert len(middle) >= 2, "content arrives in several deltas, not one buffered piece"
        assert all(set(c["delta"]) == {"content"} and c["finish_reason"] is None for c in middle)


async def test_stream_and_non_stream_agree_when_greedy(client: httpx.AsyncClient) -> None:
    fields = {"temperature": 0, "max_tokens": 6, "ignore_eos": True}
    whole = (await chat(client, **fields))["choices"][0]["message"]["content"]
    assert streamed_text(await stream_events(client, **fields)) == whole


SAME_PROMPTS = [
    pytest.param(
        [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        id="developer-is-system",
    ),
    pytest.param(
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}],
            }
        ],
        [{"role": "user", "content": "Hello there"}],
        id="text-parts-are-joined",
    ),
]


@pytest.mark.parametrize(("messages", "equivalent"), SAME_PROMPTS)
async def test_equivalent_messages(client: httpx.AsyncClient, messages: list, equivalent: list) -> None:
    fields = {"temperature": 0, "max_tokens": 4, "ignore_eos": True}
    first = await chat(client, messages=messages, **fields)
    second = await chat(client, messages=equivalent, **fields)
    assert first["usage"] == second["usage"]
    assert first["choices"][0]["message"] == second["choices"][0]["message"]


async def test_message_fields_beyond_openais_are_ignored(client: httpx.AsyncClient) -> None:
    messages = [{"role": "user", "content": "Hi", "name": "ann", "weird": 1}]
    body = await chat(client, messages=messages, logit_bias={"50": 1}, response_format={"type": "text"})
    assert body["choices"][0]["message"]["role"] == "assistant"


async def test_an_unknown_request_field_gets_400(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT_URL, json=chat_body(frobnicate=1))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_parameter"


async def test_vllm_extra_params_are_accepted(client: httpx.AsyncClient) -> None:
    extras = {"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.3, "min_tokens": 4, "ignore_eos": True}
    body = await chat(client, max_tokens=4, temperature=0.8, top_p=0.9, user="u-1", **extras)
    assert body["usage"]["completion_tokens"] == 4
    assert body["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"max_tokens": 3}, 3),
        ({"max_completion_tokens": 3}, 3),
        ({"max_tokens": 2, "max_completion_tokens": 2}, 2),
        ({"max_tokens": None}, 16),  # tiny_settings.default_max_tokens
    ],
)
async def test_token_limits(client: httpx.AsyncClient, limits: dict[str, Any], expected: int) -> None:
    body = await chat(client, ignore_eos=True, **limits)
    assert body["usage"]["completion_tokens"] == expected
    assert body["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("as_list", [False, True], ids=["string", "list"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_stop_is_not_returned(client: httpx.AsyncClient, as_list: bool, stream: bool) -> None:
    fields = {"temperature": 0, "max_tokens": 12, "ignore_eos": True}
    text = (await chat(client, **fields))["choices"][0]["message"]["content"]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert len(stop) == 3, text
    expected = text[: text.index(stop)]
    stop_field = ["never-appears-here", stop] if as_list else stop
    if stream:
        events = await stream_events(client, stop=stop_field, **fields)
        assert streamed_text(events) == expected
        assert events[-2]["choices"][0]["finish_reason"] == "stop"
    else:
        choice = (await chat(client, stop=stop_field, **fields))["choices"][0]
        assert (choice["message"]["content"], choice["finish_reason"]) == (expected, "stop")


async def test_n_up_to_max_n(client: httpx.AsyncClient, app: Any) -> None:
    max_n = app.state.loragate.settings.max_n
    body = await chat(client, n=max_n, max_tokens=2, ignore_eos=True)
    assert [c["index"] for c in body["choices"]] == list(range(max_n))
    assert body["usage"]["completion_tokens"] == 2 * max_n


async def test_seed_makes_sampling_reproducible(client: httpx.AsyncClient) -> None:
    async def sample(seed: int) -> str:
        body = await chat(client, temperature=1.0, seed=seed, max_tokens=8, ignore_eos=True)
        return str(body["choices"][0]["message"]["content"])

    first = await sample(1234)
    assert await sample(1234) == first
    assert await sample(4321) != first
    assert await sample(2**63 - 1) != await sample(-(2**63))  # the whole int64 range is accepted
