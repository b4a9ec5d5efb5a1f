"""The local embedding model under one client's large request: bounded, and not in the others' way.

Both tests failed before their fix: a request's inputs had no bound in tokens (2048 inputs of the
model's whole length: one request held the embedding worker for as long as it took), and every
request of a round was answered only when the whole round was done.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.embeddings.local import MAX_REQUEST_TOKENS, LocalEmbedder, _Job
from service.errors import InvalidRequestError
from service.protocol_completions import EmbeddingRequest


@pytest.fixture
async def embedder(tiny_model_dir: Path) -> AsyncIterator[LocalEmbedder]:
    local = LocalEmbedder(tiny_model_dir, model_name="tiny-embed", device="cpu")
    local.load()
    yield local
    await local.close()


def job(texts: list[str], loop: asyncio.AbstractEventLoop) -> _Job:
    return _Job(texts, None, loop, loop.create_future())


async def test_a_request_over_the_token_limit_is_a_400(embedder: LocalEmbedder) -> None:
    texts = ["a b c d e f g h " * 19] * 2048  # ~150 tokens each: ~300k in all, ~600 KB
    encoded = embedder._tokenizer(texts[:1])["input_ids"][0]
    assert len(encoded) * len(texts) > MAX_REQUEST_TOKENS
    loop = asyncio.get_running_loop()
    big = job(texts, loop)
    await asyncio.to_thread(embedder._round, [big])
    with pytest.raises(InvalidRequestError) as caught:
        await big.future
    assert caught.value.param == "input" and str(MAX_REQUEST_TOKENS) in caught.value.message
    body = EmbeddingRequest(model="tiny-embed", input=texts[:100])
    answer = await asyncio.wait_for(embedder.embed(body, texts[:100]), 60)  # within the limit: served
    assert len(answer["data"]) == 100


async def test_a_short_request_is_answered_before_a_long_one_of_the_same_round(
    embedder: LocalEmbedder,
) -> None:
    loop = asyncio.get_running_loop()
    long, short = job(["word " * 200] * 96, loop), job(["hi"], loop)
    order: list[str] = []
    long.future.add_done_callback(lambda _: order.append("long"))
    short.future.add_done_callback(lambda _: order.append("short"))
    await asyncio.to_thread(embedder._round, [long, short])
    await asyncio.gather(long.future, short.future)
    assert order == ["short", "long"]
    vectors, tokens = short.future.result()
    assert vectors.shape == (1, embedder.dimensions) and tokens > 0
