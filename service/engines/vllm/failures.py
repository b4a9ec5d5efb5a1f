"""Why a replica is down, in words for ``/ready`` and the log, and as a kind for a metric's label.

Kinds (a fixed set, so that a metric's series stay few): ``unreachable`` (refused, no route,
unknown host), ``tls`` (handshake or certificate), ``timeout``, ``protocol`` (the connection
closed unanswered, or the answer is not HTTP/1.1: often http:// to an https server),
``unauthorized`` (401/403: ``upstream_api_key`` missing or wrong), ``status`` (another non-2xx
answer), ``bad_answer`` (/v1/models unreadable), ``broken`` (any other transport failure), and
``dns`` for a discovered host name that no longer resolves.
"""

from __future__ import annotations

import ssl

import httpx

KINDS = ("unreachable", "tls", "timeout", "protocol", "unauthorized", "status", "bad_answer", "broken", "dns")


class ReplicaRefused(Exception):
    """A replica answered, but not as a vLLM this gateway can use: the key, a status, an odd answer."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def refusal(status: int, path: str, has_key: bool) -> ReplicaRefused:
    """A non-2xx answer to one of the backend's calls (``path``), as a reason to take the replica out."""
    if status in (401, 403):
        hint = (
            "the replica refuses upstream_api_key (is it the key of its --api-key?)"
            if has_key
            else "the replica wants an API key: set upstream_api_key to its --api-key"
        )
        return ReplicaRefused("unauthorized", f"{path} answered {status}: {hint}")
    return ReplicaRefused("status", f"{path} answered {status}")


def classify(exc: BaseException) -> tuple[str, str]:
    """``(kind, reason)`` for a failed call to a replica."""
    if isinstance(exc, ReplicaRefused):
        return exc.kind, exc.reason
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return "timeout", f"no answer in time ({text})"
    if _tls_failure(exc):
        hint = " (a plain http server behind an https:// URL?)" if "WRONG_VERSION_NUMBER" in text else ""
        said = text if text.startswith("TLS") else f"TLS failed: {text}"  # http1's own says so already
        return "tls", said + hint
    if isinstance(exc, httpx.ConnectError):
        return "unreachable", text
    if isinstance(exc, httpx.RemoteProtocolError):
        return "protocol", text
    if isinstance(exc, httpx.HTTPError):
        return "broken", text
    return "bad_answer", f"unreadable answer: {exc!r}"


def _tls_failure(exc: BaseException) -> bool:
    """An ``ssl.SSLError`` anywhere in the chain (httpx wraps httpcore's error, which wraps ssl's)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
