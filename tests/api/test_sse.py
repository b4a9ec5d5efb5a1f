"""Chunk events written by hand must read as `json.dumps` writes them; SSE lines must read back whole."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from service.engines.vllm.wire import BURST, data_lines
from service.protocol import ChatCompletionChunk
from service.sse import ChunkEvents, event

TRICKY = [
    "",
    "Hello",
    'say "hi"\\n',
    "tab\there\nnew line",
    "naïve café — 東京 🚀",
    "\x00\x1f\u2028",
    "</script>",
]


@pytest.mark.parametrize("usage_field", [False, True])
@pytest.mark.parametrize("text", TRICKY)
def test_chunks_read_as_json_dumps_writes_them(text: str, usage_field: bool) -> None:
    chunks = ChunkEvents("chatcmpl-1", 1700000000, f"model {text}", usage_field=usage_field)
    head = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": f"model {text}",
    }
    usage = {"usage": None} if usage_field else {}

    def expected(index: int, delta: dict[str, str], finish: str | None) -> str:
        return event(
            {**head, "choices": [{"index": index, "delta": delta, "finish_reason": finish}], **usage}
        )

    assert chunks.choice(0, role="assistant", content="") == expected(
        0, {"role": "assistant", "content": ""}, None
    )
    assert chunks.choice(2, content=text) == expected(2, {"content": text}, None)
    assert chunks.choice(1, finish_reason="length") == expected(1, {}, "length")
    counts = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    assert chunks.usage(counts) == event({**head, "choices": [], "usage": counts})
    for line in (chunks.choice(0, content=text), chunks.usage(counts)):
        ChatCompletionChunk.model_validate_json(line.removeprefix("data: "))  # the documented schema


async def _split(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
async def test_data_lines_survive_any_split(size: int) -> None:
    payloads = [json.dumps({"text": t}) for t in TRICKY] + ["[DONE]"]
    stream = "".join(f"data: {p}\n\n" for p in payloads).replace("\n\n", "\r\n\r\n", 1) + ": a comment\n\n"
    lines = [line async for line in data_lines(_split(stream.encode(), size))]
    assert lines == payloads


async def test_a_last_line_without_its_newline_is_read() -> None:
    assert [line async for line in data_lines(_split(b"data: [DONE]", 4))] == ["[DONE]"]


async def test_a_backlog_lets_other_requests_run_between_its_events() -> None:
    ticks = 0

    async def another_request() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(another_request())
    await asyncio.sleep(0)
    backlog = b"".join(b"data: %d\n\n" % i for i in range(50))  # one read, as from a server far ahead
    seen = [ticks async for _ in data_lines(_split(backlog, len(backlog)))]
    other.cancel()
    assert seen[-1] - seen[0] >= 49 // BURST  # the other task ran every BURST events


async def test_data_lines_end_at_done_without_reading_further() -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield b"data: one\n\ndata: [DONE]\n\ndata: after\n\n"
        raise AssertionError("read past [DONE]")

    assert [line async for line in data_lines(stream())] == ["one", "[DONE]"]
