"""One exception tree, one OpenAI error envelope.

Status codes follow openai-python's ``_make_status_error`` so that the SDK
raises the matching exception class::

    LoragateError (500, InternalServerError)
    ├── EngineFailure            500  InternalServerError (generation failed in the engine)
    ├── ServingConfigError       500  InternalServerError (the deployment's adapter or template)
    ├── AdapterLoadError         500  InternalServerError (code adapter_load_failed)
    ├── InvalidRequestError      400  BadRequestError
    │   └── ContextLengthError   400  BadRequestError (code context_length_exceeded)
    ├── AuthenticationError      401  AuthenticationError
    ├── PermissionDeniedError    403  PermissionDeniedError
    ├── NotFoundError            404  NotFoundError
    │   └── ModelNotFoundError   404  NotFoundError (code model_not_found)
    ├── MethodNotAllowedError    405  APIStatusError
    ├── RequestTimeoutError      408  APIStatusError (the SDK retries it)
    ├── RequestTooLargeError     413  APIStatusError
    ├── RateLimitError           429  RateLimitError
    │   └── OverloadedError      429  RateLimitError (code server_overloaded: the engine's queue is full)
    ├── HeadersTooLargeError     431  APIStatusError
    ├── ClientDisconnected       499  (never sent: the client is gone; for logs and metrics)
    ├── UpstreamError            502  InternalServerError (a vLLM replica failed the request)
    ├── EngineUnavailableError   503  InternalServerError
    │   └── ShuttingDownError    503  InternalServerError (code server_shutting_down: draining)
    └── GatewayTimeoutError      504  InternalServerError (code timeout: a deadline passed)

Every error that becomes an HTTP answer is defined here. Domain code below the API raises
these, or its own exceptions that the layer calling it maps here (as the planner does with
``AdapterRejected`` and ``TemplateError``).

Envelope: ``{"error": {"message", "type", "param", "code"}}``. A value the client sent goes
into a message through ``quoted``: an error must not hand back a 200 KB model name whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class LoragateError(Exception):
    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str | None] = None

    headers: Mapping[str, str] = {}  # what the error's answer must also send (Retry-After, rate limits)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, self.error_type, self.param, self.code)


class EngineFailure(LoragateError):
    """Generation failed inside the engine (500)."""


class ServingConfigError(LoragateError):
    """The deployment's own configuration (adapter, template) cannot serve this request (500)."""


class AdapterLoadError(LoragateError):
    """vLLM refused to load a registry adapter: the deployment's problem, not the client's (500)."""

    default_code = "adapter_load_failed"


class InvalidRequestError(LoragateError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthError(InvalidRequestError):
    default_code = "context_length_exceeded"


class AuthenticationError(LoragateError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(LoragateError):
    status_code = 403
    error_type = "permission_denied"
    default_code = "permission_denied"


class NotFoundError(LoragateError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"


class MethodNotAllowedError(LoragateError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class RequestTimeoutError(LoragateError):
    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class RequestTooLargeError(LoragateError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimitError(LoragateError):
    status_code = 429
    error_type = "rate_limit_exceeded"
    default_code = "rate_limit_exceeded"


class HeadersTooLargeError(LoragateError):
    status_code = 431
    error_type = "invalid_request_error"
    default_code = "headers_too_large"


class ClientDisconnected(LoragateError):
    status_code = 499
    error_type = "client_closed_request"


class UpstreamError(LoragateError):
    """vLLM failed this request (502: a gateway in front of a failing server)."""

    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_error"


class EngineUnavailableError(LoragateError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "engine_not_ready"


RETRY_SOON = {"retry-after": "1"}  # seconds: another replica, or this one once its queue has room


class OverloadedError(RateLimitError):
    """The engine already holds all the generating requests it may (what it runs at once plus
    ``max_queued_requests``): a fast 429 instead of a place in an unbounded queue."""

    error_type = "overloaded_error"
    default_code = "server_overloaded"
    headers = RETRY_SOON


class ShuttingDownError(EngineUnavailableError):
    """The gateway is draining for shutdown: new generating requests are refused, and answers still
    running when ``shutdown_grace`` ends are ended with this error."""

    default_code = "server_shutting_down"
    headers = RETRY_SOON


class GatewayTimeoutError(LoragateError):
    """No first token within ``first_token_timeout``, or no complete answer within ``request_timeout``;
    the engine's work was aborted (504)."""

    status_code = 504
    error_type = "timeout_error"
    default_code = "timeout"


def error_envelope(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


ECHO_LIMIT = 256  # characters of a client's value an error message repeats


def quoted(value: object, limit: int = ECHO_LIMIT) -> str:
    """``value`` in backticks for an error message: at most ``limit`` characters, control characters
    escaped; a longer value is cut with an ellipsis and its length, so the client still recognises it.
    """
    text = value if isinstance(value, str) else str(value)
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text[: limit + 1])
    if len(text) <= limit and len(shown) <= limit:
        return f"`{shown}`"
    return f"`{shown[:limit]}…` ({len(text)} characters)"
