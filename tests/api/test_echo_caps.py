"""What a client sends comes back in an error message capped (``quoted``), and a request id sanitised."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from service.app import create_app
from service.config import Settings
from service.errors import quoted
from tests.api.helpers import CHAT_URL, assert_envelope
from tests.conftest import API_KEY
from tests.fakes import FakeEngine

HUGE = 200_000
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def gateway() -> AsyncIterator[httpx.AsyncClient]:
    """A client on an app with the default 1 MiB body limit, so that a 200 KB model name gets through."""
    engine = FakeEngine()
    app = create_app(Settings(api_key=API_KEY, model_name=engine.model_name), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        auth = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=auth) as client:
            yield client


@pytest.mark.parametrize("stream", [False, True])
async def test_a_200_kb_model_name_comes_back_as_its_prefix(gateway: httpx.AsyncClient, stream: bool) -> None:
    model = "gpt-" + "x" * (HUGE - 4)
    response = await gateway.post(CHAT_URL, json={"model": model, "messages": MESSAGES, "stream": stream})
    error = assert_envelope(response, 404, param="model", code="model_not_found")
    assert len(response.content) < 2048
    assert error["message"].startswith("The model `gpt-xxxx")
    assert f"…` ({HUGE} characters) does not exist" in error["message"]


async def test_a_200_kb_department_header_comes_back_as_its_prefix(gateway: httpx.AsyncClient) -> None:
    department = "sales-" + "y" * (HUGE - 6)
    response = await gateway.post(
        CHAT_URL, json={"model": "fake-model", "messages": MESSAGES}, headers={"X-Department": department}
    )
    error = assert_envelope(response, 404, code="department_not_found")
    assert len(response.content) < 2048
    assert error["message"].startswith("The department `sales-yyyy")
    assert f"…` ({HUGE} characters) does not exist" in error["message"]


async def test_a_short_model_name_comes_back_whole(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post(CHAT_URL, json={"model": "gpt-4o", "messages": MESSAGES})
    error = assert_envelope(response, 404, param="model", code="model_not_found")
    assert error["message"] == "The model `gpt-4o` does not exist or you do not have access to it."


async def test_a_request_id_keeps_printable_ascii_only(gateway: httpx.AsyncClient) -> None:
    """Echoed in the answer, logged, and sent on to vLLM: no control characters, at most 128 characters."""
    given = b"trace\t1\xff" + b"z" * 300
    response = await gateway.get("/v1/models", headers={"x-request-id": given})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace1" + "z" * 120  # of its first 128 bytes


def test_quoted_leaves_a_short_value_as_it_is() -> None:
    assert quoted("gpt-4o") == "`gpt-4o`"
    assert quoted(42) == "`42`"
    assert quoted("é" * 256) == "`" + "é" * 256 + "`"


def test_quoted_cuts_a_long_value_and_says_how_long_it_was() -> None:
    assert quoted("a" * 257) == "`" + "a" * 256 + "…` (257 characters)"
    assert quoted("abcdef", limit=3) == "`abc…` (6 characters)"
    assert len(quoted("b" * HUGE)) < 300


def test_quoted_escapes_control_characters_within_the_limit() -> None:
    assert quoted("a\nb\x1b[31m") == "`a\\nb\\x1b[31m`"
    shown = quoted("\x00" * 200)  # escaping makes it 800 characters: still cut at the limit
    assert shown.startswith("`\\x00\\x00") and shown.endswith("…` (200 characters)") and len(shown) < 300
