"""Errors, authentication, request ids and the small endpoints, over httpx's ASGI transport."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.api.helpers import CHAT_URL, assert_envelope, chat_body
from tests.conftest import TINY_MODEL

INVALID_PARAMS = [
    ({"temperature": 3}, "temperature", None),
    ({"top_p": 0}, "top_p", None),
    ({"n": 0}, "n", None),
    ({"n": 9}, "n", None),  # over max_n (8)
    ({"max_tokens": 0}, "max_tokens", None),
    ({"max_tokens": 2, "max_completion_tokens": 3}, "max_tokens", None),
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens", None),
    ({"top_k": -2}, "top_k", None),
    ({"seed": 2**70}, "seed", None),  # torch takes int64 seeds; this was a 500 from the engine
    ({"repetition_penalty": 0}, "repetition_penalty", None),
    ({"stop": 5}, "stop", None),
    ({"stop": ["x"] * 17}, "stop", None),
    ({"messages": []}, "messages", None),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", None),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0", None),  # no tool_call_id
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": "x",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                }
            ]
        },
        "messages.0",
        None,
    ),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages.0.content", None),
    ({"model": None}, "model", None),
    ({"stream_options": {"include_usage": "sometimes"}}, "stream_options.include_usage", None),
    ({"max_tokens": 5000}, "messages", "context_length_exceeded"),  # over the model's 1024 tokens
    ({"max_tokens": 5000, "stream": True}, "messages", "context_length_exceeded"),
]


@pytest.mark.parametrize(("fields", "param", "code"), INVALID_PARAMS)
async def test_invalid_params_are_400(
    client: httpx.AsyncClient, fields: dict, param: str, code: str | None
) -> None:
    response = await client.post(CHAT_URL, json=chat_body(**fields))
    sent_param = response.json().get("error", {}).get("param")  # a union may add its branch: content.str
    error = assert_envelope(response, 400, param=sent_param, code=code)
    assert error["type"] == "invalid_request_error"
    assert sent_param == param or sent_param.startswith(param + ".")


@pytest.mark.parametrize("raw", [b"{nope", b"", b"\xff\xfe{}", b'{"model": "x",}', b"[1, 2]", b"null"])
async def test_unparsable_bodies_are_400(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(CHAT_URL, content=raw, headers={"content-type": "application/json"})
    assert_envelope(response, 400)


@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_model_is_404(client: httpx.AsyncClient, stream: bool) -> None:
    response = await client.post(CHAT_URL, json=chat_body(model="gpt-4o", stream=stream))
    error = assert_envelope(response, 404, param="model", code="model_not_found")
    assert "gpt-4o" in error["message"]


BAD_AUTH = [None, "Bearer wrong-key", "Bearer ", "Basic c2stdGVzdA==", "sk-test-0123456789abcdef"]


@pytest.mark.parametrize("authorization", BAD_AUTH)
@pytest.mark.parametrize(("method", "path"), [("POST", CHAT_URL), ("GET", "/v1/models")])
async def test_bad_keys_are_401(app: FastAPI, authorization: str | None, method: str, path: str) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as anon:
        response = await anon.request(method, path, json=chat_body(), headers=headers)
    error = assert_envelope(response, 401, code="invalid_api_key")
    assert "0123456789abcdef" not in error["message"]


@pytest.mark.parametrize(
    "body",
    [b"{nope", json.dumps(chat_body(temperature=9)).encode(), json.dumps(chat_body(model="gpt-4o")).encode()],
    ids=["malformed", "invalid", "unknown-model"],
)
async def test_401_precedes_body_errors(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(CHAT_URL, content=body, headers={"authorization": "Bearer wrong-key"})
    assert_envelope(response, 401, code="invalid_api_key")


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient, app: FastAPI) -> None:
    limit = app.state.loragate.settings.max_request_bytes
    big = chat_body(messages=[{"role": "user", "content": "x" * limit}])
    response = await client.post(CHAT_URL, json=big)
    assert_envelope(response, 413, code="request_too_large")


async def test_chunked_body_over_the_limit_is_413(client: httpx.AsyncClient, app: FastAPI) -> None:
    limit = app.state.loragate.settings.max_request_bytes
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent <= 2 * limit:
            sent += 64 * 1024
            yield b" " * (64 * 1024)

    response = await client.post(CHAT_URL, content=chunks())
    assert "content-length" not in response.request.headers
    assert_envelope(response, 413, code="request_too_large")


async def test_body_just_under_the_limit_is_served(client: httpx.AsyncClient, app: FastAPI) -> None:
    limit = app.state.loragate.settings.max_request_bytes
    raw = json.dumps(chat_body())
    padded = raw[:-1] + " " * (limit - len(raw)) + "}"
    response = await client.post(CHAT_URL, content=padded, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/nope", 404), ("PUT", CHAT_URL, 405)])
async def test_unknown_routes_use_the_envelope(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    assert_envelope(await client.request(method, path), status)


REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/health", {}),
    ("GET", "/v1/models", {}),
    ("POST", CHAT_URL, {"json": chat_body(max_tokens=1)}),
    ("POST", CHAT_URL, {"json": chat_body(max_tokens=1, stream=True)}),
    ("POST", CHAT_URL, {"json": chat_body(temperature=9)}),  # 400
    ("POST", CHAT_URL, {"json": chat_body(), "headers": {"authorization": "Bearer x"}}),  # 401
    ("GET", "/nope", {}),  # 404
    ("POST", CHAT_URL, {"content": b"x" * 2_000_000}),  # 413
]


@pytest.mark.parametrize(("method", "path", "kwargs"), REQUESTS)
async def test_request_id_is_echoed_or_generated(
    client: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    kwargs = dict(kwargs)
    headers = {"x-request-id": "client-chose-this-id"} | kwargs.pop("headers", {})
    echoed = await client.request(method, path, headers=headers, **kwargs)
    assert echoed.headers["x-request-id"] == "client-chose-this-id"
    first = await client.request(method, path, headers=headers | {"x-request-id": ""}, **kwargs)
    second = await client.request(method, path, **kwargs)
    generated = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(re.fullmatch(r"req-[0-9a-f]{32}", g) for g in generated)
    assert generated[0] != generated[1]


async def test_health_and_ready_need_no_key(app: FastAPI) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as anon:
        health, ready = await anon.get("/health"), await anon.get("/ready")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert {"running", "waiting"} <= set(ready.json())


async def test_models_list(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [TINY_MODEL]
    card = body["data"][0]
    assert card["object"] == "model" and isinstance(card["created"], int) and card["owned_by"]


async def test_docs_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger" in response.text.lower()


async def test_openapi_describes_the_chat_body(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    operation = doc["paths"]["/v1/chat/completions"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "messages", "stream", "max_tokens", "top_k"} <= set(schema["properties"])
    assert {"model", "messages"} <= set(schema["required"])
    for ref in re.findall(r'"\$ref": "([^"]+)"', json.dumps(doc)):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]  # a KeyError here is a reference that Swagger UI cannot resolve
