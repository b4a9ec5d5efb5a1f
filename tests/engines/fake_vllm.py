"""A scripted vLLM server for fast unit tests of the vLLM backend, over either upstream client.

Each ``FakeVllm`` answers like one replica: /health, /v1/models, /metrics, runtime adapter
loading, and streamed chat completions and completions whose tokens are the words of ``reply``
(or scripted ``chunks``), with logprobs when asked, as vLLM 0.32 streams them. Its
knobs script failures; ``calls`` records what the backend sent. A ``Cluster`` of them sits
behind ``httpx.MockTransport`` (``HttpxUpstream`` over it), or, after ``listen``, on real
sockets on 127.0.0.1 for the gateway's own HTTP/1.1 client and for httpx's pool
(``client``): the same scripts, and the same assertions, over every ``UpstreamClient``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import httpx

from service.engines.vllm.http1 import Http1Transport
from service.engines.vllm.upstream import HttpxUpstream, UpstreamClient

Wire = Literal["mock", "http1", "httpx"]
WIRES: list[Wire] = ["mock", "http1", "httpx"]


def sse(*payloads: Any) -> bytes:
    return b"".join(f"data: {p if isinstance(p, str) else json.dumps(p)}\n\n".encode() for p in payloads)


def chunk(index: int, content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    return {"object": "chat.completion.chunk", "choices": [choice]}


def tool_chunk(
    index: int, call: int, *, id: str | None = None, name: str | None = None, arguments: str | None = None
) -> dict[str, Any]:
    """A chat chunk with a piece of a tool call, as vLLM's tool parsers stream them."""
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    piece: dict[str, Any] = {"index": call, "function": function}
    if id is not None:
        piece |= {"id": id, "type": "function"}
    choice = {
        "index": index,
        "delta": {"content": None, "tool_calls": [piece]},
        "logprobs": None,
        "finish_reason": None,
    }
    return {"object": "chat.completion.chunk", "choices": [choice]}


def word_logprob(word: str, top: int) -> dict[str, Any]:
    """Chat logprobs for one token: its own logprob -0.5, alternatives -1, -2, ..."""
    alternatives = [{"token": word, "logprob": -0.5, "bytes": list(word.encode())}]
    alternatives += [{"token": f"alt{k}", "logprob": -1.0 - k, "bytes": None} for k in range(top - 1)]
    return {"token": word, "logprob": -0.5, "bytes": list(word.encode()), "top_logprobs": alternatives[:top]}


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
    chat_error_param: str | None = None  # vLLM names the field it refuses, for its own validation
    tool_parser: bool = True  # started with --enable-auto-tool-choice --tool-call-parser
    chunks: list[dict[str, Any]] | None = None  # scripted chat chunks (usage and [DONE] follow)
    finish: str | None = None  # the scripted chunks' finish reason
    error_event: str | None = None  # a 200 stream that carries only this error, then [DONE]
    break_after: int | None = None  # chunks before the stream breaks
    delay: float = 0.0  # per chunk
    load_delay: float = 0.0
    adapters: dict[str, str] = field(default_factory=dict)  # name -> path
    calls: list[tuple[str, Any]] = field(default_factory=list)
    headers: list[httpx.Headers] = field(default_factory=list)  # of each call, in order
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
        self.headers.append(request.headers)
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
        if path in ("/v1/chat/completions", "/v1/completions"):
            return self._chat(body) if path == "/v1/chat/completions" else self._completion(body)
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

    def _refusal(self, body: dict[str, Any]) -> httpx.Response | None:
        if self.chat_status != 200:
            error = {"message": self.chat_error, "type": "BadRequestError", "param": self.chat_error_param}
            return httpx.Response(self.chat_status, json={"error": error})
        if body.get("tools") and body.get("tool_choice") not in (None, "none") and not self.tool_parser:
            message = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
            return httpx.Response(400, json={"error": {"message": message, "type": "BadRequestError"}})
        if body["model"] not in (self.base, *self.adapters):
            missing = {"error": {"message": f"The model `{body['model']}` does not exist."}}
            return httpx.Response(404, json=missing)
        return None

    def _chat(self, body: dict[str, Any]) -> httpx.Response:
        if self.error_event is not None and self.chat_status == 200:
            return httpx.Response(200, content=sse({"error": {"message": self.error_event}}, "[DONE]"))
        if (refused := self._refusal(body)) is not None:
            return refused
        words = self.reply.split(" ")
        parts: list[Any] = []
        for index in range(body.get("n", 1)):
            if self.chunks is not None:
                parts += [{**c, "choices": [{**c["choices"][0], "index": index}]} for c in self.chunks]
                parts.append(chunk(index, None, self.finish or "stop"))
                continue
            for i, word in enumerate(words):
                text = word if i == 0 else " " + word
                part = chunk(index, text)
                if body.get("logprobs"):
                    part["choices"][0]["logprobs"] = {
                        "content": [word_logprob(text, body.get("top_logprobs", 0))]
                    }
                parts.append(part)
            parts.append(chunk(index, None, "length" if body.get("ignore_eos") else "stop"))
        parts += [usage(7, len(words) * body.get("n", 1)), "[DONE]"]
        return self._stream(parts)

    def _completion(self, body: dict[str, Any]) -> httpx.Response:
        """/v1/completions: the reply's words; with ``echo``, the prompt's words lead the first chunk's
        logprobs (the first without one), and ``return_token_ids`` keeps its text out and counts them."""
        if (refused := self._refusal(body)) is not None:
            return refused
        words, prompt = self.reply.split(" "), body["prompt"].split(" ")
        top = body.get("logprobs")
        parts: list[Any] = []
        for index in range(body.get("n", 1)):
            for i, word in enumerate(words):
                text = word if i == 0 else " " + word
                choice: dict[str, Any] = {
                    "index": index,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": None,
                }
                tokens = [text]
                if i == 0 and body.get("echo"):
                    tokens = prompt + tokens
                    choice["prompt_token_ids"] = list(range(len(prompt)))
                    if not body.get("return_token_ids"):
                        choice["text"] = body["prompt"] + text
                if top is not None:
                    choice["logprobs"] = {
                        "text_offset": [0] * len(tokens),
                        "tokens": tokens,
                        "token_logprobs": [
                            None if i == k == 0 and body.get("echo") else -0.5 for k in range(len(tokens))
                        ],
                        "top_logprobs": [
                            None if i == k == 0 and body.get("echo") else {t: -0.5, "alt": -3.0}
                            for k, t in enumerate(tokens)
                        ],
                    }
                parts.append({"object": "text_completion", "choices": [choice]})
            finish = {
                "index": index,
                "text": "",
                "finish_reason": "length" if body.get("ignore_eos") else "stop",
            }
            parts.append({"object": "text_completion", "choices": [finish]})
        parts += [usage(len(prompt), len(words) * body.get("n", 1)), "[DONE]"]
        return self._stream(parts)

    def _stream(self, parts: list[Any]) -> httpx.Response:
        stream = Body([sse(p) for p in parts], break_after=self.break_after, delay=self.delay)
        self.bodies.append(stream)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)


class Cluster:
    """Several fake replicas behind one transport, routed by host:port; or each on a socket (``listen``)."""

    def __init__(self, count: int = 1):
        self.replicas = {f"http://10.0.0.{i + 1}:8000": FakeVllm() for i in range(count)}
        self.transport = httpx.MockTransport(self._handle)
        self._servers: list[asyncio.Server] = []
        self._serving: set[asyncio.Task[Any]] = set()

    @property
    def urls(self) -> list[str]:
        return list(self.replicas)

    def __getitem__(self, index: int) -> FakeVllm:
        return list(self.replicas.values())[index]

    def client(self, wire: Wire) -> UpstreamClient:
        """The backend's client for ``wire``: over the MockTransport, or one for the sockets."""
        if wire == "mock":
            return HttpxUpstream(self.transport)
        return Http1Transport() if wire == "http1" else HttpxUpstream()

    async def listen(self) -> None:
        """Serve each replica over HTTP/1.1 on 127.0.0.1; ``urls`` become theirs."""
        replicas = {}
        for fake in self.replicas.values():
            server = await asyncio.start_server(partial(self._serve, fake), "127.0.0.1", 0)
            replicas[f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"] = fake
            self._servers.append(server)
        self.replicas = replicas

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._serving):
            task.cancel()
        await asyncio.gather(*self._serving, return_exceptions=True)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        return await self.replicas[f"{request.url.scheme}://{request.url.netloc.decode()}"].handle(request)

    async def _serve(
        self, fake: FakeVllm, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One connection: requests in turn. A refused request closes it unanswered, a slow one stalls."""
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            while (request := await _read_request(reader)) is not None:
                try:
                    response = await fake.handle(request)
                except httpx.TimeoutException:
                    await asyncio.sleep(3600)  # until the client gives up (and the test's end)
                    return
                except httpx.TransportError:
                    return
                if not await _write(writer, response):
                    return
        except ConnectionError:
            pass
        finally:
            self._serving.discard(task)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> httpx.Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # the client closed the connection
    line, *fields = head.decode("latin-1").split("\r\n")
    method, target, _ = line.split(" ", 2)
    headers = [(name.strip(), value.strip()) for name, _, value in (f.partition(":") for f in fields if f)]
    length = int(next((value for name, value in headers if name.lower() == "content-length"), 0))
    return httpx.Request(
        method, f"http://fake{target}", headers=headers, content=await reader.readexactly(length)
    )


async def _write(writer: asyncio.StreamWriter, response: httpx.Response) -> bool:
    """The answer as HTTP/1.1; a streamed one chunked, as it comes. False: the body broke off."""
    status = b"HTTP/1.1 %d %s\r\n" % (response.status_code, response.reason_phrase.encode())
    fields = [
        (k, v) for k, v in response.headers.raw if k.lower() not in (b"content-length", b"transfer-encoding")
    ]
    head = status + b"".join(b"%s: %s\r\n" % field for field in fields)
    if not isinstance(response.stream, Body):
        body = await response.aread()
        writer.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        return True
    writer.write(head + b"transfer-encoding: chunked\r\n\r\n")
    try:
        async for part in response.stream:
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
    except httpx.ReadError:
        return False  # the connection closes in the middle of the body
    finally:
        await response.stream.aclose()
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True
