"""Small helpers shared by the API tests."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import TINY_MODEL

CHAT_URL = "/v1/chat/completions"
ENVELOPE_KEYS = {"message", "type", "param", "code"}


def chat_body(**fields: Any) -> dict[str, Any]:
    """A valid request for the tiny model; ``fields`` override or add."""
    body: dict[str, Any] = {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 3,
    }
    return body | fields


def sse_events(text: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body, JSON-decoded except the final ``[DONE]``.

    Also checks the framing: every event is exactly one ``data:`` line followed by a blank line.
    """
    assert text.endswith("\n\n"), "an SSE body ends with a blank line"
    events: list[Any] = []
    for block in text.removesuffix("\n\n").split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block, f"bad SSE event: {block!r}"
        payload = block.removeprefix("data: ")
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def assert_envelope(response: Any, status: int, *, param: str | None = None, code: str | None = None) -> dict:
    """The response is an OpenAI error envelope with this status; returns its ``error`` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == ENVELOPE_KEYS
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return dict(error)
