"""The canary for uvicorn's private httptools protocol, which ``GatewayHttpProtocol`` subclasses.

``uvicorn_internals_missing`` names what of that private API is missing or changed (names,
signatures, then one request through a bare subclass over a stand-in transport); ``server_options``
(service/http_server.py) falls back to uvicorn's own protocol when it names anything. pyproject.toml
pins the uvicorn releases in ``UVICORN_TESTED``; ``warn_if_untested_uvicorn`` says when another runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

try:  # private: if uvicorn moves it, this module still imports and the canary says so
    from uvicorn.protocols.http import httptools_impl as httptools_impl  # re-exported: http_server.py
except ImportError:
    httptools_impl = None  # type: ignore[assignment]  # mypy types an imported module as never None

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as HttpToolsProtocol
else:
    HttpToolsProtocol = getattr(httptools_impl, "HttpToolsProtocol", asyncio.Protocol)

log = logging.getLogger(__name__)

# The uvicorn releases GatewayHttpProtocol is tested on, [first, second): pyproject.toml pins the same.
UVICORN_TESTED = ((0, 55), (0, 56))

_METHODS = {
    "connection_made": ("transport",),
    "connection_lost": ("exc",),
    "data_received": ("data",),
    "on_message_begin": (),
    "on_headers_complete": (),
    "on_message_complete": (),
    "on_response_complete": (),
    "handle_websocket_upgrade": (),
}
# The hooks a request runs through, in order: GatewayHttpProtocol's overrides are dead if one is not called.
_HOOKS = ("on_message_begin", "on_headers_complete", "on_message_complete", "on_response_complete")
_PROBE_WAIT = 10.0  # seconds: a bound for a few passes of an idle event loop, never reached when all is well


def uvicorn_internals_missing() -> list[str]:
    """What of uvicorn's private API ``GatewayHttpProtocol`` relies on is missing or changed; ``[]``: nothing.

    Names and signatures first; then, if they are all there, one request through a bare subclass of
    uvicorn's protocol over a stand-in transport (no socket, no server), which checks what only a
    running protocol shows: that the hooks are called, and the state the gateway reads is where it reads it.
    """
    if httptools_impl is None:
        return ["uvicorn.protocols.http.httptools_impl (the module)"]
    missing = _names_missing()
    if missing:
        return missing
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a loop of its own, even under a running one
        return pool.submit(_probe).result()


def _names_missing() -> list[str]:
    missing = []
    status_line = getattr(httptools_impl, "STATUS_LINE", None)
    if not isinstance(status_line, Mapping) or not all(
        isinstance(line := status_line.get(code), bytes)
        and re.fullmatch(rb"HTTP/1\.1 %d .*\r\n" % code, line)
        for code in (408, 431)
    ):
        missing.append("httptools_impl.STATUS_LINE (status code: status line)")
    for name, parameters in _METHODS.items():
        method = getattr(HttpToolsProtocol, name, None)
        # Defined by uvicorn, not only inherited from asyncio.Protocol (whose methods do nothing).
        if not callable(method) or not getattr(method, "__module__", "").startswith("uvicorn."):
            missing.append(f"HttpToolsProtocol.{name}")
        elif tuple(inspect.signature(method).parameters)[1:] != parameters:
            missing.append(f"HttpToolsProtocol.{name}(self{''.join(', ' + p for p in parameters)})")
    return missing


def _attributes_missing(protocol: object, paths: Iterable[str]) -> list[str]:
    missing = []
    for path in paths:
        value = protocol
        for name in path.split("."):
            if not hasattr(value, name):
                missing.append(f"HttpToolsProtocol().{path}")
                break
            value = getattr(value, name)
    return missing


class _ProbeTransport(asyncio.Transport):
    """Stands in for a client's socket: keeps what is written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _probe() -> list[str]:
    try:
        return asyncio.run(_probe_request())
    except Exception as exc:  # whatever uvicorn changed, it is named, not raised
        return [f"a request through HttpToolsProtocol ({type(exc).__name__}: {exc})"]


async def _probe_request() -> list[str]:
    """One request, ``Expect: 100-continue`` and a body, through a subclass that records the hooks called."""
    from uvicorn.server import ServerState

    called: list[str] = []

    def recorder(name: str) -> Callable[[Any], None]:
        def hook(self: Any) -> None:
            called.append(name)
            getattr(super(probe_class, self), name)()

        return hook

    probe_class = type("Probe", (HttpToolsProtocol,), {name: recorder(name) for name in _HOOKS})
    served: list[str] = []
    done = asyncio.Event()

    def app_named(name: str) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                served.append(name)
                while (await receive()).get("more_body"):
                    pass
                await send(
                    {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
                )
                await send({"type": "http.response.body", "body": b""})
            finally:
                done.set()

        return app

    config = uvicorn.Config(app_named("config.app"), log_config=None, ws="none", lifespan="off")
    loop = asyncio.get_running_loop()
    protocol = probe_class(config, ServerState(), {}, _loop=loop)
    protocol.access_log = False  # no access line for the probe (if uvicorn drops this flag, no harm)
    transport = _ProbeTransport()
    protocol.connection_made(transport)
    missing = _attributes_missing(
        protocol,
        ("loop", "transport", "client", "app", "cycle", "flow.read_paused", "server_state.default_headers"),
    )
    protocol.app = app_named("self.app")  # as GatewayHttpProtocol has a 431 answered
    protocol.data_received(
        b"POST /probe HTTP/1.1\r\nhost: probe\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n"
    )
    head_read = (protocol.url, protocol.headers[:1]) == (b"/probe", [(b"host", b"probe")])
    cycle_paths = ("cycle.response_started", "cycle.response_complete", "cycle.waiting_for_100_continue")
    missing += _attributes_missing(protocol, cycle_paths)
    waiting = getattr(protocol.cycle, "waiting_for_100_continue", None) is True  # before the app runs
    protocol.data_received(b"ok")
    with contextlib.suppress(TimeoutError):  # then the checks below say what did not happen
        await asyncio.wait_for(done.wait(), _PROBE_WAIT)
    completed = getattr(protocol.cycle, "response_complete", None) is True
    protocol.connection_lost(None)
    checks = {
        "HttpToolsProtocol.loop, .transport: the loop and transport it was given": (
            protocol.loop is loop and protocol.transport is transport
        ),
        "HttpToolsProtocol.url, .headers: the request's target and headers": head_read,
        "HttpToolsProtocol.cycle.waiting_for_100_continue: True until answered": waiting,
        "HttpToolsProtocol.on_headers_complete: runs self.app": served == ["self.app"],
        "HttpToolsProtocol.cycle.response_complete: True once answered": completed,
        f"HttpToolsProtocol hooks called in order: {', '.join(_HOOKS)}": called == list(_HOOKS),
        "HttpToolsProtocol: writes 100 Continue, then the answer": transport.written.startswith(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
        ),
    }
    return missing or [what for what, ok in checks.items() if not ok]


def uvicorn_version_tested(version: str) -> bool:
    """Whether ``version`` is in ``UVICORN_TESTED``."""
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    return UVICORN_TESTED[0] <= numbers < UVICORN_TESTED[1]


def warn_if_untested_uvicorn(version: str) -> None:
    """Warn, at import, when uvicorn is not a release this was tested on: the canary may not be run there."""
    if not uvicorn_version_tested(version):
        tested = ".".join(map(str, UVICORN_TESTED[0])), ".".join(map(str, UVICORN_TESTED[1]))
        log.warning(
            "uvicorn %s is outside the releases service/http_server.py is tested on (>=%s,<%s): run"
            " tests/api/test_uvicorn_canary.py and re-pin uvicorn in pyproject.toml",
            version,
            *tested,
        )


warn_if_untested_uvicorn(uvicorn.__version__)
