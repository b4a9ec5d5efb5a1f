"""Pure ASGI middleware: request ids, the body size limit and a last-resort 500; request metrics.

``GatewayMiddleware`` wraps every route: every response, an unexpected failure included,
carries ``x-request-id`` and the OpenAI error envelope, never a stack trace.
``MetricsMiddleware`` wraps the chat route outside it, so that it sees every status it sends.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import accounting
from .accounting import new_facts
from .errors import LoragateError, RequestTooLargeError
from .ids import unique_hex
from .ledger.records import Route as LedgerRoute
from .metrics import Metrics, attach

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID = 128  # characters of the client's request id kept
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
MAX_ERROR_BODY = 65_536  # an error envelope is far smaller; beyond this its type reads "unknown"


def client_request_id(raw: bytes) -> str:
    """The client's ``x-request-id``, as echoed in the answer, sent to vLLM and logged: at most
    ``MAX_REQUEST_ID`` characters of printable ASCII (others dropped), so that it cannot carry
    control characters into a log line or another server's request head.
    """
    given = raw[:MAX_REQUEST_ID].decode("latin-1")
    if not (given.isascii() and given.isprintable()):
        given = _NOT_PRINTABLE_ASCII.sub("", given)
    return given.strip()


def new_request_id() -> str:
    return f"req-{unique_hex()}"


def request_id_of(scope: Scope) -> str:
    return str(scope.get("state", {}).get("request_id", ""))


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = client_request_id(headers.get(REQUEST_ID_HEADER.encode(), b"")) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._send_error(send_with_id, self._too_large())
            return
        try:
            await self.app(scope, self._limited(receive), send_with_id)
        except LoragateError as exc:
            if started:
                raise
            await self._send_error(send_with_id, exc)
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            if started:
                raise
            await self._send_error(
                send_with_id, LoragateError("The server had an error processing your request.")
            )

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that raises 413 once the body passes the limit (bodies without Content-Length)."""
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large()
            return message

        return limited_receive

    def _too_large(self) -> RequestTooLargeError:
        return RequestTooLargeError(f"The request body is larger than {self.max_body_bytes} bytes.")

    @staticmethod
    async def _send_error(send: Send, exc: LoragateError) -> None:
        body = json.dumps(exc.envelope()).encode()
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *((name.encode("latin-1"), value.encode("latin-1")) for name, value in exc.headers.items()),
        ]
        await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Wraps each generating route: a ``RequestMetrics`` in ``scope["state"]`` for it, and, when the
    response is over (sent, failed or the client gone), its status and duration.

    It also ends the request's accounting (service/accounting.py): before the answer's last bytes
    go out, the request's usage record is committed to the ledger; after them, its reservation
    under the limits is settled. An error response's ``type`` is read from its envelope,
    whichever layer sent it.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, usage: LedgerRoute):
        self.app = app
        self.metrics = metrics
        self.usage = usage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        recorder = self.metrics.request()
        recorder.facts = new_facts(self.usage)
        attach(scope, recorder)
        state = scope["app"].state.loragate
        status: int | None = None
        recorded = False
        error_body = bytearray()

        async def send_recorded(message: Message) -> None:
            nonlocal status, recorded
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status is not None:
                if status >= 400:
                    error_body.extend(message.get("body", b"")[: MAX_ERROR_BODY - len(error_body)])
                if not message.get("more_body", False) and not recorded:
                    recorded = True  # in the ledger before the client has the whole answer
                    error = _error_type(bytes(error_body)) if status >= 400 else recorder.failure
                    await accounting.record(state, recorder, request_id_of(scope), status, error)
            await send(message)

        try:
            await self.app(scope, receive, send_recorded)
        finally:
            if status is None:  # nothing was sent: the server answers 500
                recorder.close(500, "internal_error")
            else:
                recorder.close(status, _error_type(bytes(error_body)) if status >= 400 else None)
            if not recorded:  # the answer never ended: the server failed (500), or the client left (499)
                code, error = (500, "internal_error") if status is None else (499, "client_disconnected")
                accounting.record_nowait(state, recorder, request_id_of(scope), code, error)
            await accounting.settle(recorder)


def _error_type(body: bytes) -> str:
    try:
        error = json.loads(body)["error"]
        return str(error["type"])
    except (ValueError, KeyError, TypeError):
        return "unknown"
