"""Hand-written hostile requests against a real server on the tiny model: never a 5xx, never a hang.

Schemathesis (test_openapi_fuzz.py) generates from the schema; these are the inputs it does not
think of: nesting thousands deep (in the body, in a tool's schema, in a response format), bodies
near the size limit, invalid UTF-8, NaN and infinities, thousands of messages. Slow senders are
tested in tests/api/test_slow_clients.py. After each case the server must still answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY, TINY_MODEL, LiveServer, make_settings

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
USER = [{"role": "user", "content": "Hi"}]


def nested(depth: int, leaf: object, key: str = "a") -> object:
    value = leaf
    for _ in range(depth):
        value = {key: value}
    return value


def deep_schema(depth: int) -> bytes:
    """A schema nested ``depth`` objects deep, as JSON text (too deep for ``json.dumps``)."""
    return b'{"type": "object", "properties": {"x": ' * depth + b'{"type": "string"}' + b"}}" * depth


def chat(**fields: object) -> bytes:
    return json.dumps({"model": TINY_MODEL, "messages": USER, "max_tokens": 4, **fields}).encode()


CASES = {
    "metadata nested 50,000 deep": b'{"model": "tiny-llama", "messages": [], "metadata": '
    + b'{"a": ' * 50_000
    + b"1"
    + b"}" * 50_000
    + b"}",
    "content array nested 50,000 deep": b'{"model": "tiny-llama", "messages": [{"role": "user", "content": '
    + b"[" * 50_000
    + b"]" * 50_000
    + b"}]}",
    "tool parameters nested 3,000 deep": chat(tool_choice="required")[:-1]
    + b', "tools": [{"type": "function", "function": {"name": "f", "parameters": '
    + deep_schema(3000)
    + b"}}]}",
    "response schema nested 200 deep": chat()[:-1]
    + b', "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": '
    + deep_schema(200)
    + b"}}}",
    "response schema with a catastrophic pattern": chat(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "^(a+)+(b+)+(c+)+$" * 20}},
        }
    ),
    "a 900 KB message": chat(messages=[{"role": "user", "content": "word " * 180_000}]),
    "a 100 KB model name": chat(model="m" * 100_000),
    "invalid UTF-8": b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}',
    "a lone surrogate": b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "NaN temperature": chat()[:-1] + b', "temperature": NaN}',
    "infinite top_p": chat()[:-1] + b', "top_p": Infinity}',
    "a 1e400 penalty": chat()[:-1] + b', "presence_penalty": 1e400}',
    "5,000 messages": chat(messages=[{"role": "user", "content": "hi"}] * 5000),
    "1,024 logit biases": chat(logit_bias={str(i): 100 for i in range(1024)}),
    "a logit bias beyond the vocabulary": chat(logit_bias={"999999999": 5}),
    "top_logprobs 20 with n 8": chat(logprobs=True, top_logprobs=20, n=8, max_tokens=16),
    "256 prompts with echo and logprobs": json.dumps(
        {"model": TINY_MODEL, "prompt": ["Hello there"] * 256, "echo": True, "logprobs": 20, "max_tokens": 2}
    ).encode(),
    "an empty body": b"",
    "a JSON array body": b"[1, 2, 3]",
}
PATHS = {"256 prompts with echo and logprobs": "/v1/completions"}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    with LiveServer(make_settings(tiny_model_dir, max_context=512)) as live:
        yield live


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_request_gets_an_answer_not_a_server_error(server: LiveServer, name: str) -> None:
    root = server.base_url.removesuffix("/v1")
    path = PATHS.get(name, "/v1/chat/completions")
    response = httpx.post(f"{root}{path}", content=CASES[name], headers=AUTH, timeout=120)
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" or response.status_code in (404, 413), error
        assert len(response.content) < 4096  # nothing the client sent is echoed whole
    assert httpx.get(f"{root}/health", timeout=5).status_code == 200
