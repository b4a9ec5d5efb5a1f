"""POST /v1/chat/completions: parse, hand to the chat service, return."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from ..errors import InvalidRequestError, LoragateError
from ..middleware import request_id_of
from ..protocol import ChatCompletion, ChatCompletionRequest
from ..sse import DONE
from ..state import PrincipalDep, RecorderDep, StateDep

router = APIRouter(tags=["chat"])
CHAT_PATH = "/v1/chat/completions"


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


_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inline_defs(ChatCompletionRequest.model_json_schema())}},
    }
}


async def parse_body(request: Request) -> ChatCompletionRequest:
    """Parse after authentication, so a bad key is a 401 whatever the body holds."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. Send valid JSON."
        ) from None
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequestError(
            f"Invalid value for {param or 'the body'}: {first['msg']}", param=param
        ) from None


@router.post(CHAT_PATH, response_model=ChatCompletion, openapi_extra=_BODY_SCHEMA)
async def create_chat_completion(
    request: Request, state: StateDep, principal: PrincipalDep, metrics: RecorderDep
) -> Any:
    metrics.authenticated(principal.tenant.name)
    body = await parse_body(request)
    department = request.headers.get(state.settings.department_header)
    plan = await state.chat.planner.plan(body, principal, department, request_id_of(request.scope), metrics)
    if body.stream:
        events = await state.chat.open_stream(plan, body, metrics)
        headers = {"cache-control": "no-cache", **plan.headers()}
        return EventStream(events, media_type="text/event-stream", headers=headers)
    completion = await until_disconnected(request, state.chat.complete(plan, body, metrics))
    return JSONResponse(completion.model_dump(mode="json"), headers=plan.headers())


class EventStream(StreamingResponse):
    """A streamed response whose generator is closed the moment the response ends, however it ends.

    When a client disconnects while a chunk is being sent, Starlette cancels the send and leaves the
    generator suspended: its cleanup (aborting the engine's work, closing the upstream request so vLLM
    stops) would wait for the garbage collector, which let vLLM go on for hundreds of tokens.
    """

    async def stream_response(self, send: Send) -> None:
        """As Starlette's, but the chunk that ends in ``[DONE]`` also ends the body: one write less."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            last = chunk.endswith(DONE)
            await send({"type": "http.response.body", "body": chunk.encode(), "more_body": not last})
            if last:
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


class ClientDisconnected(LoragateError):
    status_code = 499
    error_type = "client_closed_request"


async def until_disconnected(request: Request, work: Any) -> Any:
    """Run ``work``; if the client goes away first, cancel it (which aborts the engine request)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise ClientDisconnected("The client closed the connection.")
    return task.result()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
