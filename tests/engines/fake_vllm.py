"""A scripted vLLM server behind ``httpx.MockTransport``, for fast unit tests of the vLLM backend.

Each ``FakeVllm`` answers like one replica: /health, /v1/models, /metrics, runtime adapter
loading and streamed chat completions whose tokens are the words of ``reply``. Its
knobs script failures; ``calls`` records what the backend sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


def sse(*payloads: Any) -> bytes:
    return b"".join(f"data: {p if isinstance(p, str) else json.dumps(p)}\n\n".encode() for p in payloads)


def chunk(index: int, content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    return {"object": "chat.completion.chunk", "choices": [choice]}


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


class Body(httpx.AsyncByteStream):
    """A streamed body that can stall, break after some chunks, and notes whether it was closed."""

    def __init__(self, parts: list[bytes], *, break_after: int | None = None, delay: float = 0.0):
        self.parts, self.break_after, self.delay = parts, break_after, delay
        self.closed = False
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if self.break_after is not None and self.sent >= self.break_after:
                raise httpx.ReadError("connection reset by peer")
            await asyncio.sleep(self.delay)
            self.sent += 1
            yield part

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class FakeVllm:
    base: str = "base-model"
    reply: str = "Hello from vLLM"
    alive: bool = True
    slow_health: bool = False  # /health times out, as on a host too busy to answer in time
    refuse_load: int | None = None  # status for /v1/load_lora_adapter
    chat_status: int = 200
    chat_error: str = "bad request"
    break_after: int | None = None  # chunks before the stream breaks
    delay: float = 0.0  # per chunk
    load_delay: float = 0.0
    adapters: dict[str, str] = field(default_factory=dict)  # name -> path
    calls: list[tuple[str, Any]] = field(default_factory=list)
    bodies: list[Body] = field(default_factory=list)
    running: int = 0
    metrics_gate: asyncio.Event | None = None  # /metrics answers once set, as a vLLM busy streaming

    def paths(self) -> list[str]:
        return [path for path, _ in self.calls]

    def bodies_sent(self, path: str) -> list[Any]:
        return [body for p, body in self.calls if p == path]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if not self.alive:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        body = json.loads(request.content) if request.content else None
        self.calls.append((path, body))
        if path == "/health":
            if self.slow_health:
                raise httpx.ReadTimeout("timed out", request=request)
            return httpx.Response(200)
        if path == "/metrics":
            if self.metrics_gate is not None:
                await self.metrics_gate.wait()
            return httpx.Response(200, text=f'vllm:num_requests_running{{engine="0"}} {self.running}.0\n')
        if path == "/v1/models":
            models = [{"id": self.base, "parent": None, "max_model_len": 2048}]
            models += [{"id": name, "parent": self.base} for name in self.adapters]
            return httpx.Response(200, json={"object": "list", "data": models})
        if path == "/v1/load_lora_adapter":
            return await self._load(body)
        if path == "/v1/unload_lora_adapter":
            self.adapters.pop(body["lora_name"], None)
            return httpx.Response(200, text="unloaded")
        if path == "/v1/chat/completions":
            return self._chat(body)
        return httpx.Response(404, json={"error": {"message": "no such route"}})

    async def _load(self, body: dict[str, Any]) -> httpx.Response:
        await asyncio.sleep(self.load_delay)
        if self.refuse_load is not None:
            refusal = {"error": {"message": "rank 64 exceeds max_lora_rank"}}
            return httpx.Response(self.refuse_load, json=refusal)
        if body["lora_name"] in self.adapters:
            return httpx.Response(400, json={"error": {"message": "has already been loaded"}})
        self.adapters[body["lora_name"]] = body["lora_path"]
        return httpx.Response(200, text="Success")

    def _chat(self, body: dict[str, Any]) -> httpx.Response:
        if self.chat_status != 200:
            return httpx.Response(self.chat_status, json={"error": {"message": self.chat_error}})
        if body["model"] not in (self.base, *self.adapters):
            missing = {"error": {"message": f"The model `{body['model']}` does not exist."}}
            return httpx.Response(404, json=missing)
        words = self.reply.split(" ")
        parts: list[Any] = []
        for index in range(body.get("n", 1)):
            parts += [chunk(index, w if i == 0 else " " + w) for i, w in enumerate(words)]
            parts.append(chunk(index, None, "length" if body.get("ignore_eos") else "stop"))
        parts += [usage(7, len(words) * body.get("n", 1)), "[DONE]"]
        stream = Body([sse(p) for p in parts], break_after=self.break_after, delay=self.delay)
        self.bodies.append(stream)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)


class Cluster:
    """Several fake replicas behind one transport, routed by host:port."""

    def __init__(self, count: int = 1):
        self.replicas = {f"http://10.0.0.{i + 1}:8000": FakeVllm() for i in range(count)}
        self.transport = httpx.MockTransport(self._handle)

    @property
    def urls(self) -> list[str]:
        return list(self.replicas)

    def __getitem__(self, index: int) -> FakeVllm:
        return list(self.replicas.values())[index]

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        return await self.replicas[f"{request.url.scheme}://{request.url.netloc.decode()}"].handle(request)
