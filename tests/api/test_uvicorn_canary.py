"""uvicorn's private API under the gateway's protocol (service/http_server.py): the canary and the fallback.

``GatewayHttpProtocol`` subclasses uvicorn's httptools protocol and reads its internals. The canary
fails when a uvicorn release changes them; ``server_options`` then serves with uvicorn's own protocol.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service import http_server, uvicorn_canary
from service.config import Settings
from service.http_server import GatewayHttpProtocol, server_options
from service.uvicorn_canary import (
    UVICORN_TESTED,
    uvicorn_internals_missing,
    uvicorn_version_tested,
    warn_if_untested_uvicorn,
)
from tests.conftest import LiveServer

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_uvicorn_has_the_private_api_the_gateway_protocol_uses() -> None:
    missing = uvicorn_internals_missing()
    assert missing == [], (
        f"uvicorn {uvicorn.__version__} changed private API {'; '.join(missing)}"
        " used by service/http_server.py: re-test and re-pin."
        " Adapt GatewayHttpProtocol, re-test (this file, tests/api/test_http_server.py,"
        " tests/api/test_slow_clients.py) and re-pin uvicorn in pyproject.toml (docs/development.md)."
    )


def test_the_installed_uvicorn_is_in_the_range_pinned_and_tested() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    low, high = (".".join(map(str, bound)) for bound in UVICORN_TESTED)
    assert f"uvicorn[standard]>={low},<{high}" in dependencies, "pyproject.toml and UVICORN_TESTED disagree"
    assert uvicorn_version_tested(uvicorn.__version__), (
        f"uvicorn {uvicorn.__version__} is installed, outside >={low},<{high}: run this file's canary,"
        " then move the pin in pyproject.toml and UVICORN_TESTED together"
    )


def test_a_release_outside_the_tested_range_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    low, high = UVICORN_TESTED
    inside, below, above = f"{low[0]}.{low[1]}.7", f"{low[0]}.{low[1] - 1}.9", f"{high[0]}.{high[1]}.0"
    assert [uvicorn_version_tested(v) for v in (inside, below, above, "1.0.0")] == [True, False, False, False]
    with caplog.at_level(logging.WARNING, logger=uvicorn_canary.__name__):
        warn_if_untested_uvicorn(inside)
        assert caplog.records == []
        warn_if_untested_uvicorn(above)
    [record] = caplog.records
    assert record.levelno == logging.WARNING and above in record.getMessage()


def _keep_uvicorn_module(function: Callable[..., None], original: Callable[..., None]) -> None:
    function.__module__ = original.__module__  # as if uvicorn itself had changed


def _without_status_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(httptools_impl, "STATUS_LINE")


def _without_on_response_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(HttpToolsProtocol, "on_response_complete")


def _data_received_renamed(monkeypatch: pytest.MonkeyPatch) -> None:
    original = HttpToolsProtocol.data_received

    def data_received(self: HttpToolsProtocol, chunk: bytes) -> None:
        original(self, chunk)

    _keep_uvicorn_module(data_received, original)
    monkeypatch.setattr(HttpToolsProtocol, "data_received", data_received)


def _runs_the_configured_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn running the app of its config, not ``self.app``: the gateway's 431 would go unanswered."""
    original = HttpToolsProtocol.on_headers_complete

    def on_headers_complete(self: HttpToolsProtocol) -> None:
        swapped, self.app = self.app, self.config.loaded_app
        try:
            original(self)
        finally:
            self.app = swapped

    _keep_uvicorn_module(on_headers_complete, original)
    monkeypatch.setattr(HttpToolsProtocol, "on_headers_complete", on_headers_complete)


CHANGES = {
    "STATUS_LINE": _without_status_line,
    "HttpToolsProtocol.on_response_complete": _without_on_response_complete,
    "HttpToolsProtocol.data_received(self, data)": _data_received_renamed,
    "on_headers_complete: runs self.app": _runs_the_configured_app,
}


@pytest.mark.parametrize("named", CHANGES)
def test_a_changed_internal_falls_back_to_uvicorn_s_own_protocol_with_one_warning(
    named: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(max_connections=7, keep_alive_timeout=6)
    assert issubclass(server_options(settings)["http"], GatewayHttpProtocol)
    CHANGES[named](monkeypatch)
    with caplog.at_level(logging.WARNING, logger=uvicorn_canary.__name__):
        options = server_options(settings)
    assert options == {
        "http": "httptools",
        "limit_concurrency": 8,
        "timeout_keep_alive": 6,
        "timeout_graceful_shutdown": settings.shutdown_grace + http_server.SHUTDOWN_MARGIN,
    }
    [record] = caplog.records
    assert record.levelno == logging.WARNING and named in record.getMessage()
    assert "uvicorn's own httptools protocol" in record.getMessage()


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": scope["path"].encode()})


def test_a_server_on_the_fallback_still_answers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _runs_the_configured_app(monkeypatch)  # a change uvicorn's own protocol still serves with
    with caplog.at_level(logging.WARNING, logger=http_server.__name__), LiveServer(app=hello) as live:
        assert live.server.config.http == "httptools"
        assert live.server.config.http_protocol_class is HttpToolsProtocol
        response = httpx.get(f"http://127.0.0.1:{live.port}/hello", timeout=10)
    assert (response.status_code, response.text) == (200, "/hello")
    [warning] = [record for record in caplog.records if record.name == http_server.__name__]
    assert "on_headers_complete: runs self.app" in warning.getMessage()
