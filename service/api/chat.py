"""POST /v1/chat/completions as a plain ASGI app: parse, hand to the chat service, answer.

This is the gateway's hot path, so it runs ahead of FastAPI (``LoragateApp``) and skips its
per-request machinery: middleware layers, routing, dependency injection, Request and
Response objects, a task group per streamed response, which cost CPU on every request
(measured when the route left them: ``git log -p -- BENCHMARKS.md``, "The hot path
rewritten"). Its own stack gives it
what the other routes get from theirs: request ids, the body limit and OpenAI error
envelopes (``GatewayMiddleware``), and metrics (``MetricsMiddleware``). FastAPI documents
it in openapi.json (``document``) from the same pydantic models.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from ..errors import ClientDisconnected, InvalidRequestError, MethodNotAllowedError
from ..metrics import recorder_of
from ..middleware import request_id_of
from ..protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from ..sse import DONE
from ..state import AppState

CHAT_PATH = "/v1/chat/completions"
T = TypeVar("T")


class ChatRoute:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            raise MethodNotAllowedError(f"{CHAT_PATH} takes POST requests only.")
        state: AppState = scope["app"].state.loragate
        metrics = recorder_of(scope)
        headers = Headers(scope=scope)
        principal = state.tenancy.authenticate(headers.get("authorization"))
        metrics.authenticated(principal.tenant.name)
        body = parse_body(await read_body(receive))  # after authentication: a bad key is a 401 whatever
        department = headers.get(state.settings.department_header)
        plan = await state.chat.planner.plan(body, principal, department, request_id_of(scope), metrics)
        if body.stream:
            events = await state.chat.open_stream(plan, body, metrics)
            head = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
            await stream_events(events, receive, send, head | plan.headers())
            return
        completion = await until_disconnected(receive, state.chat.complete(plan, body, metrics))
        await send_json(send, completion.model_dump(mode="json"), plan.headers())


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("The client closed the connection.")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_body(raw: bytes) -> ChatCompletionRequest:
    """JSON straight into the model: one pass in pydantic's parser, not ``json.loads`` and then another."""
    try:
        return ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            message = "We could not parse the JSON body of your request. Send valid JSON."
            raise InvalidRequestError(message) from None
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequestError(
            f"Invalid value for {param or 'the body'}: {first['msg']}", param=param
        ) from None


async def stream_events(
    events: AsyncIterator[str], receive: Receive, send: Send, headers: dict[str, str]
) -> None:
    """Relay SSE text as it comes; the generator is closed the moment the response ends, however it ends.

    Closing it aborts the engine's work (for vLLM: closes the upstream request, so vLLM stops).
    A client that leaves cancels the relay; the response is then over, with nothing to report.
    """

    async def relay() -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _raw(headers)})
        async for text in events:
            last = text.endswith(DONE)  # the chunk that ends in [DONE] also ends the body: one write less
            await send({"type": "http.response.body", "body": text.encode(), "more_body": not last})
            if last:
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    try:
        await until_disconnected(receive, relay())
    except (ClientDisconnected, OSError):  # OSError: how ASGI 2.4 servers report a gone client on send
        pass
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def send_json(send: Send, content: Any, headers: dict[str, str]) -> None:
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
    head = {"content-type": "application/json", "content-length": str(len(body)), **headers}
    await send({"type": "http.response.start", "status": 200, "headers": _raw(head)})
    await send({"type": "http.response.body", "body": body})


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


async def until_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Run ``work`` in this task; if the client goes away first, cancel it (which aborts the engine request).

    One watcher task per request, not a task for the work as well: a task costs more than all the
    bookkeeping this route does for the request.
    """
    this = asyncio.current_task()
    assert this is not None
    watching, gone = True, False

    def on_disconnect(watcher: asyncio.Future[None]) -> None:
        nonlocal gone
        if watching and not watcher.cancelled() and watcher.exception() is None:
            gone = True
            this.cancel()

    watcher = asyncio.ensure_future(_disconnect(receive))
    watcher.add_done_callback(on_disconnect)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and this.uncancel() == 0:  # our cancel, no one else's: the client left
            raise ClientDisconnected("The client closed the connection.") from None
        raise
    finally:
        watching = False  # a callback already scheduled must not cancel what runs next
        watcher.cancel()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def document(openapi: dict[str, Any]) -> dict[str, Any]:
    """``openapi`` with this route described: the request body and both kinds of answer."""
    request = _inline_defs(ChatCompletionRequest.model_json_schema())
    completion = _inline_defs(ChatCompletion.model_json_schema())
    chunk = _inline_defs(ChatCompletionChunk.model_json_schema())
    paths = openapi.setdefault("paths", {})
    if CHAT_PATH in paths:
        return openapi  # FastAPI keeps the document: described on the first call
    paths[CHAT_PATH] = {
        "post": {
            "tags": ["chat"],
            "summary": "Create Chat Completion",
            "operationId": "create_chat_completion",
            "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
            "responses": {
                "200": {
                    "description": "The completion; with `stream: true`, server-sent events: "
                    "`data: <chunk>` lines, then `data: [DONE]`.",
                    "content": {
                        "application/json": {"schema": completion},
                        "text/event-stream": {"schema": chunk},
                    },
                },
                "default": {"description": 'An OpenAI error envelope: `{"error": {...}}`.'},
            },
        }
    }
    return openapi


def _inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined: ``#/$defs/...`` would not resolve in openapi.json."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return dict(resolve(schema))
