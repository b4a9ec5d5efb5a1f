"""``instant_upstream`` plus what a client may ask of vLLM directly: answers not streamed, /v1/completions.

    .venv/bin/python -m loadtests.instant_openai PORT

The gateway always streams from vLLM (chat, or completions for a raw prompt), and
``instant_upstream`` speaks only streamed chat. Two benchmarks need the rest: ``bench_accounting``
compares the gateway's non-streamed throughput with the stand-in's own (called without
streaming), and ``soak`` sends /v1/completions through the gateway. Everything answers at once,
with ``max_tokens`` tokens of "Hi" and 5 prompt tokens, as ``instant_upstream`` does.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from loadtests import instant_upstream

PROMPT_TOKENS = 5


def _usage(tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": tokens,
        "total_tokens": tokens + PROMPT_TOKENS,
    }


def _json(payload: object) -> Response:
    return Response(json.dumps(payload), media_type="application/json")


async def chat(request: Request) -> Response:
    body = await request.json()
    if body.get("stream"):
        return await instant_upstream.chat(request)  # it reads the body cached by starlette
    tokens = body.get("max_tokens") or 1
    message = {"role": "assistant", "content": "Hi" * tokens}
    return _json({
        "id": "x", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": "length", "logprobs": None}],
        "usage": _usage(tokens),
    })  # fmt: skip


async def completions(request: Request) -> Response:
    body = await request.json()
    model, tokens = body["model"], body.get("max_tokens") or 1
    if not body.get("stream"):
        choice = {"index": 0, "text": "Hi" * tokens, "finish_reason": "length", "logprobs": None}
        return _json({
            "id": "x", "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [choice], "usage": _usage(tokens),
        })  # fmt: skip

    def event(text: str, finish: str | None = None) -> str:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        chunk = {"id": "x", "object": "text_completion", "created": 0, "model": model, "choices": [choice]}
        return f"data: {json.dumps(chunk)}\n\n"

    async def all_at_once() -> AsyncIterator[str]:
        token = event("Hi")
        for sent in range(0, tokens, instant_upstream.BATCH):
            yield token * min(instant_upstream.BATCH, tokens - sent)
        yield event("", "length")
        yield f"data: {json.dumps({'choices': [], 'usage': _usage(tokens)})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(all_at_once(), media_type="text/event-stream")


app = Starlette(
    routes=[
        *(r for r in instant_upstream.app.routes if getattr(r, "path", "") != "/v1/chat/completions"),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
