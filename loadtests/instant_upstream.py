"""A stand-in for vLLM that answers at once (all ``max_tokens`` tokens), for the gateway's own cost.

    .venv/bin/python -m loadtests.instant_upstream PORT

It speaks the parts of vLLM's OpenAI server the gateway uses (/health, /metrics, /v1/models,
runtime adapter loading, streamed chat completions), so the benchmark can put the gateway in
front of it and compare with calling it directly: whatever the gateway adds is then its own
work, not the noise of a model sharing the CPU.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "SmolLM2-135M-Instruct"
BATCH = 64  # tokens per write when a request asks for many


def _event(payload: object) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _chunk(model: str, delta: dict[str, str], finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return _event(
        {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [choice]}
    )


async def chat(request: Request) -> Response:
    body = await request.json()
    model, tokens = body["model"], body.get("max_tokens") or 1

    async def all_at_once() -> AsyncIterator[str]:
        yield _chunk(model, {"role": "assistant", "content": ""})
        token = _chunk(model, {"content": "Hi"})
        for sent in range(0, tokens, BATCH):  # as fast as the socket takes them
            yield token * min(BATCH, tokens - sent)
        yield _chunk(model, {}, "length")
        usage = {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": tokens + 5}
        yield _event({"choices": [], "usage": usage})
        yield "data: [DONE]\n\n"

    return StreamingResponse(all_at_once(), media_type="text/event-stream")


async def models(_: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": MODEL, "parent": None, "max_model_len": 8192}]})


async def ok(_: Request) -> Response:
    return PlainTextResponse("")


async def metrics(_: Request) -> Response:
    return PlainTextResponse('vllm:num_requests_running{engine="0"} 0.0\n')


app = Starlette(
    routes=[
        Route("/health", ok),
        Route("/metrics", metrics),
        Route("/v1/models", models),
        Route("/v1/load_lora_adapter", ok, methods=["POST"]),
        Route("/v1/unload_lora_adapter", ok, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
