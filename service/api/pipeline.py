"""Every ``/v1`` route goes through one pipeline, ahead of FastAPI's per-request machinery.

The ``/v1`` routes are the gateway's hot path. FastAPI's middleware layers, routing, dependency
injection, Request and Response objects and a task group per streamed response cost CPU on
every request (measured when the chat route left them: ``git log -p -- BENCHMARKS.md``, "The
hot path rewritten"), so they get this small pipeline instead; FastAPI keeps the operational
routes (``/health``, ``/ready``, ``/metrics``) and serves the docs, where the ``/v1`` routes are
described from this route table and the protocol models (``describe``).

A request, in order:

1. ``MetricsMiddleware``, for generating routes (``usage`` set): the request's metrics and the
   status that went out, whichever layer sent it; its usage record and its limits' settlement.
2. ``GatewayMiddleware``: request id, body limit, any ``LoragateError`` as the OpenAI envelope.
3. ``Endpoint``: the method (405), the caller's key (401), the body into the route's request
   model (400); for generating routes, admission (``service/admission.py``: 429 when the
   engine's queue is full, 503 while draining); then the route's handler, which returns an
   :class:`Answer` (JSON or SSE).

A client that leaves cancels the handler and the relay of its answer (which aborts the engine's
work), on every route: ``until_disconnected`` runs them in a scope (``service/cancel.py``). A generating
request's scope is its admission's: its deadline is ``request_timeout``, and the drain cancels it
once ``shutdown_grace`` is over; the client then gets 504 or 503, or, when its stream has begun,
the error as an event and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import fastjson
from ..cancel import RequestScope, ScopeEnded
from ..errors import (
    ClientDisconnected,
    InvalidRequestError,
    LoragateError,
    MethodNotAllowedError,
    NotFoundError,
    quoted,
)
from ..ledger.records import Route as LedgerRoute
from ..metrics import Metrics, RequestMetrics, recorder_of
from ..middleware import GatewayMiddleware, MetricsMiddleware, request_id_of
from ..sse import DONE, event
from ..state import AppState
from ..tenancy import Principal

T = TypeVar("T")
SSE_HEAD = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
LAST_WRITE_SECONDS = 2.0  # how long an interrupted stream's error event may wait for a slow reader


@dataclass(slots=True)
class Call:
    """What a handler gets besides the parsed body: the app's state and who is asking."""

    scope: Scope
    state: AppState
    principal: Principal
    headers: Headers
    metrics: RequestMetrics | None  # None on routes that are not measured

    @property
    def request_id(self) -> str:
        return request_id_of(self.scope)

    @property
    def path_params(self) -> dict[str, str]:
        """A templated route's parameter (``/v1/models/{model}``): the rest of the path, decoded."""
        params: dict[str, str] = self.scope.get("path_params", {})
        return params


@dataclass(slots=True)
class Answer:
    """A handler's answer: a JSON body, or SSE text to relay as it comes (closed when the response ends)."""

    json: Any = None
    events: AsyncGenerator[str, None] | None = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Call, Any], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """One ``/v1`` route: what it takes and answers (the docs come from these models) and who serves it."""

    method: str
    path: str
    handler: Handler
    response: type[BaseModel]
    request: type[BaseModel] | None = None  # None: no body is read
    stream: type[BaseModel] | None = None  # the SSE event, when the request may ask for a stream
    # A generating route: measured in the request metrics, under the limits, in the usage ledger
    # (service/accounting.py), under this name.
    usage: LedgerRoute | None = None
    summary: str = ""
    tag: str = ""


class Endpoint:
    """The routes of one path, behind the pipeline's checks."""

    def __init__(self, path: str, routes: Sequence[ApiRoute]):
        self.path = path
        self.routes = {route.method: route for route in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["method"])
        if route is None:
            allowed = " or ".join(sorted(self.routes))
            raise MethodNotAllowedError(f"{self.path} takes {allowed} requests only.")
        state: AppState = scope["app"].state.loragate
        metrics = recorder_of(scope) if route.usage else None
        headers = Headers(scope=scope)
        principal = await state.tenancy.authenticate_async(headers.get("authorization"))
        call = Call(scope, state, principal, headers, metrics)
        if metrics is not None:
            metrics.authenticated(principal.tenant.name, principal.key_id)
        body = await _body(route, receive, metrics)  # after authentication: a bad key is a 401 regardless
        if route.usage is None:
            await _answer(route, call, body, receive, send)
            return
        assert metrics is not None  # a generating route: measured
        admission = state.admission
        # Once the whole request is in: a slow sender holds a connection (until body_timeout), not a place.
        gate, deadline = admission.enter(route.usage)
        try:
            sent = _Sent(send)
            try:
                await _answer(route, call, body, receive, sent, deadline)
            except Interrupted:
                await _interrupted(admission.interrupted(deadline), sent, metrics)
        finally:
            admission.leave(gate, deadline)


async def _answer(
    route: ApiRoute,
    call: Call,
    body: Any,
    receive: Receive,
    send: Send,
    scope: RequestScope | None = None,
) -> None:
    """The handler's answer, sent as it comes; the client leaving cancels it (as does ``scope``)."""
    started = False

    async def respond() -> None:
        nonlocal started
        answer = await route.handler(call, body)
        started = True
        if answer.events is None:
            await send_json(send, answer.json, answer.headers)
        else:
            await relay(answer.events, send, SSE_HEAD | answer.headers)

    try:
        await until_disconnected(receive, respond(), scope)
    except ClientDisconnected:
        if not started:
            raise
    except OSError:  # how ASGI 2.4 servers report a gone client on send; before that, our own fault
        if not started:
            raise


_SSE_TYPE = (b"content-type", SSE_HEAD["content-type"].encode())


class _Sent:
    """``send``, noting how far the response got, and whether it is a stream."""

    __slots__ = ("send", "head", "stream", "end")

    def __init__(self, send: Send):
        self.send = send
        self.head = self.stream = self.end = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.head = True
            self.stream = _SSE_TYPE in message["headers"]
        elif not message.get("more_body", False):
            self.end = True  # before the write: a write cut short may still have ended the response
        await self.send(message)


async def _interrupted(error: LoragateError, sent: _Sent, metrics: RequestMetrics) -> None:
    """A request cut by its deadline or the drain: the error as the answer, or as its stream's last event."""
    if not sent.head:
        raise error  # the gateway middleware answers it: 504 or 503
    if sent.end or not sent.stream:  # answered, or a JSON body cut after its head: nothing to mend
        return
    metrics.fail(error.error_type)
    last = event(error.envelope()) + DONE
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LAST_WRITE_SECONDS):  # the client may not be reading
            await sent({"type": "http.response.body", "body": last.encode(), "more_body": False})


async def _body(route: ApiRoute, receive: Receive, metrics: RequestMetrics | None) -> Any:
    if route.request is None:
        return None
    body = parse_body(route.request, await read_body(receive))
    if metrics is not None:
        metrics.asked(getattr(body, "model", ""))
    return body


class ApiRouter:
    """The ``/v1`` paths, each with its own stack (metrics, where measured, around the gateway's checks).

    A path is looked up exactly first (the hot path: one dict lookup). Only a path that is not a
    route's is matched against the templated routes, whose one parameter ends the path and takes
    all of its rest (``/v1/models/{model}``: model ids may hold "/").
    """

    def __init__(self, routes: Sequence[ApiRoute], *, max_body_bytes: int, metrics: Metrics):
        self.routes = tuple(routes)
        by_path: dict[str, list[ApiRoute]] = {}
        for route in routes:
            by_path.setdefault(route.path, []).append(route)
        self.stacks: dict[str, ASGIApp] = {}
        for path, group in by_path.items():
            stack: ASGIApp = GatewayMiddleware(Endpoint(path, group), max_body_bytes=max_body_bytes)
            usage = next((route.usage for route in group if route.usage), None)
            if usage is not None:  # outermost: it sees every status
                stack = MetricsMiddleware(stack, metrics=metrics, usage=usage)
            self.stacks[path] = stack
        # "/v1/models/{model}" -> ("/v1/models/", "model", its stack), out of the exact paths
        self.templated: list[tuple[str, str, ASGIApp]] = []
        for path in [path for path in self.stacks if "{" in path]:
            prefix, _, name = path.partition("{")
            if not name.endswith("}") or "{" in name or "}" in name[:-1]:
                raise ValueError(f"{path}: a templated route has one parameter, at the end of its path")
            self.templated.append((prefix, name[:-1], self.stacks.pop(path)))
        self._unknown = GatewayMiddleware(_unknown_path, max_body_bytes=max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"][len(scope.get("root_path", "")) :]
        stack = self.stacks.get(path)
        if stack is None:
            stack = self._templated(scope, path)
        await stack(scope, receive, send)

    def _templated(self, scope: Scope, path: str) -> ASGIApp:
        for prefix, name, stack in self.templated:
            if path.startswith(prefix) and len(path) > len(prefix):
                scope["path_params"] = {name: path[len(prefix) :]}
                return stack
        return self._unknown


async def _unknown_path(scope: Scope, receive: Receive, send: Send) -> None:
    raise NotFoundError(f"There is no route {quoted(scope['path'])}.", code="unknown_url")


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("The client closed the connection.")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    """JSON straight into the model: one pass in pydantic's parser, not ``json.loads`` and then another."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_request(exc) from None


def invalid_request(exc: ValidationError) -> InvalidRequestError:
    """pydantic's first complaint as the OpenAI 400 (``param`` names the field)."""
    return first_problem(exc.errors())


def first_problem(errors: Sequence[Any]) -> InvalidRequestError:
    """The first of pydantic's (or FastAPI's) validation errors as the OpenAI 400: one wording for all."""
    first = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    if first["type"] == "json_invalid":
        return InvalidRequestError("We could not parse the JSON body of your request. Send valid JSON.")
    loc = tuple(first["loc"])
    loc = loc[1:] if loc[:1] in (("body",), ("query",)) else loc  # FastAPI's start with where: "body"
    param = ".".join(str(p) for p in loc) or None
    if first["type"] == "extra_forbidden":  # OpenAI's answer to a field it does not know
        return InvalidRequestError(
            f"Unknown parameter: {quoted(param or '')}.", param=param, code="unknown_parameter"
        )
    message = str(first["msg"]).removeprefix("Value error, ")
    return InvalidRequestError(f"Invalid value for {param or 'the body'}: {message}", param=param)


async def relay(events: AsyncGenerator[str, None], send: Send, headers: dict[str, str]) -> None:
    """Relay SSE text as it comes; the generator is closed the moment the response ends, however it ends.

    Closing it aborts the engine's work (for vLLM: closes the upstream request, so vLLM stops).
    """
    try:
        await send({"type": "http.response.start", "status": 200, "headers": _raw(headers)})
        async for text in events:
            last = text.endswith(DONE)  # the chunk that ends in [DONE] also ends the body: one write less
            await send({"type": "http.response.body", "body": text.encode(), "more_body": not last})
            if last:
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await events.aclose()


async def send_json(send: Send, content: Any, headers: dict[str, str]) -> None:
    body = fastjson.dumps(content)
    head = {"content-type": "application/json", "content-length": str(len(body)), **headers}
    await send({"type": "http.response.start", "status": 200, "headers": _raw(head)})
    await send({"type": "http.response.body", "body": body})


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


class Interrupted(Exception):
    """The request's own cancel scope ended its work: its deadline passed, or the drain ended it."""


async def until_disconnected(receive: Receive, work: Awaitable[T], scope: RequestScope | None = None) -> T:
    """Run ``work`` in this task; if the client goes away first, cancel it and raise ClientDisconnected.

    ``work`` runs in ``scope`` when given (a generating request's, from its admission): when that
    ends it (its deadline, the drain), ``Interrupted`` is raised.

    One watcher task per request, not a task for the work as well: a task costs more than all the
    bookkeeping a route does for the request. The scope tells its own cancellation from anyone
    else's (a server shutting down), so only a client that left becomes ClientDisconnected.
    """
    scope = RequestScope() if scope is None else scope

    def cancel_work(done: asyncio.Future[None]) -> None:
        if not (done.cancelled() or done.exception()):
            scope.cancel("client")

    watcher = asyncio.ensure_future(_disconnect(receive))
    watcher.add_done_callback(cancel_work)
    try:
        return await scope.run(work)
    except ScopeEnded as ended:
        if ended.reason == "client":
            raise ClientDisconnected("The client closed the connection.") from None
        raise Interrupted() from None
    finally:
        watcher.cancel()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
