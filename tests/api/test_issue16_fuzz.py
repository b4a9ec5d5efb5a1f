"""Any JSON a client sends to issue 16's surface gets 200 or a 4xx, never a 5xx (as test_isolation.py
does for chat's sampling fields): tools, tool choices and JSON schemas decoded by the real grammar
compiler, logprobs, logit_bias, /v1/completions, /v1/embeddings (a local model) and /v1/models/{id},
on the tiny model."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from tests.api.conftest import AUTH
from tests.api.helpers import CHAT_URL, chat_body
from tests.conftest import TINY_MODEL, make_settings, wait_ready

EMBEDDER = "tiny-embed"
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
async def gateway(tiny_model_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    config = make_settings(tiny_model_dir, local_embedding_model=tiny_model_dir, embeddings_model=EMBEDDER)
    app = create_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=AUTH) as client:
            await wait_ready(client)
            yield client


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
)


def or_anything(admitted: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(admitted, admitted, admitted, anything)


regexes = st.one_of(
    st.sampled_from(
        ["^[a-z]{1,8}$", "((", "a{2,1}", "(a|b)*c", "[", "\\d+", "^(?=a)b", "a{1000000}", "\\p{L}+"]
    ),
    st.text(alphabet="ab()[]{}*+?|^$\\.,0123456789", max_size=12),
)


def json_schemas(valid: bool) -> st.SearchStrategy[dict[str, Any]]:
    """JSON schemas of many shapes; ``valid``: keyword values of the right types (the metaschema's)."""

    def value(admitted: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return admitted if valid else or_anything(admitted)

    types = ["string", "integer", "number", "boolean", "null", "object", "array"]
    leaf = st.one_of(
        st.fixed_dictionaries(
            {"type": st.sampled_from(types if valid else [*types, "nonsense"])},
            optional={
                "minLength": value(st.integers(0, 2**40)),
                "maxLength": value(st.integers(0, 2**40)),
                "pattern": regexes,
                "format": st.sampled_from(
                    ["date-time", "email", "uuid", "ipv4", "hostname", "iban", "regex"]
                ),
                "minimum": value(st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False))),
                "maximum": value(st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False))),
                "multipleOf": value(st.floats(0.001, 10)),
                "enum": st.lists(scalars, min_size=1, max_size=4),
                "minItems": value(st.integers(0, 2**40)),
            },
        ),
        st.fixed_dictionaries({"const": scalars}),
        st.fixed_dictionaries(
            {"$ref": st.sampled_from(["#", "#/$defs/a", "#/definitions/missing", "http://x/y"])}
        ),
    )
    names = st.text(alphabet="abcxyz_", min_size=1, max_size=4) if valid else st.text(max_size=4)
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.fixed_dictionaries(
                {"type": st.just("object"), "properties": st.dictionaries(names, inner, max_size=3)},
                optional={
                    "required": st.lists(names, max_size=3, unique=True),
                    "additionalProperties": st.one_of(st.booleans(), inner),
                    "patternProperties": st.dictionaries(regexes, inner, max_size=2),
                    "$defs": st.fixed_dictionaries({"a": inner}),
                },
            ),
            st.fixed_dictionaries(
                {"type": st.just("array"), "items": inner}, optional={"maxItems": st.integers(0, 5)}
            ),
            st.fixed_dictionaries({"anyOf": st.lists(inner, min_size=1, max_size=3)}),
            st.fixed_dictionaries({"allOf": st.lists(inner, min_size=1, max_size=3)}),
            st.fixed_dictionaries({"oneOf": st.lists(inner, min_size=1, max_size=3)}),
        ),
        max_leaves=6,
    )


schemas = json_schemas(valid=False)
tool_names = st.one_of(st.sampled_from(["f", "get_weather", "g-2"]), st.text(max_size=8))
tools = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "function", "custom", "x"])},
    optional={
        "function": st.fixed_dictionaries(
            {"name": tool_names}, optional={"parameters": or_anything(schemas), "strict": st.booleans()}
        ),
        "custom": anything,
    },
)
tool_choices = st.one_of(
    st.sampled_from(["none", "auto", "required", "any"]),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["function", "allowed_tools", "custom"])},
        optional={
            "function": st.fixed_dictionaries({"name": tool_names}),
            "allowed_tools": anything,
        },
    ),
    anything,
)
response_formats = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema", "yaml"])}),
    st.fixed_dictionaries(
        {
            "type": st.just("json_schema"),
            "json_schema": st.fixed_dictionaries(
                {"name": or_anything(st.sampled_from(["x", "a-b"]))},
                optional={"schema": or_anything(schemas), "strict": st.booleans()},
            ),
        }
    ),
    anything,
)
logit_bias = st.dictionaries(
    st.one_of(st.integers(0, 60_000).map(str), st.text(max_size=4)),
    st.one_of(st.floats(-100, 100), st.integers(-200, 200)),
    max_size=4,
)


def chat_fields(or_any: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Issue 16's chat fields; ``or_any``: any JSON in their place too, else admitted values."""

    def value(admitted: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return or_anything(admitted) if or_any else admitted

    valid_tools = st.lists(
        st.fixed_dictionaries(
            {
                "type": st.just("function"),
                "function": st.fixed_dictionaries(
                    {"name": st.sampled_from(["f", "get_weather", "g-2"])},
                    optional={"parameters": json_schemas(valid=True)},
                ),
            }
        ),
        min_size=1,
        max_size=3,
        unique_by=lambda tool: tool["function"]["name"],
    )
    valid_formats = st.one_of(
        st.sampled_from(FORMATS),
        json_schemas(valid=True).map(
            lambda s: {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}
        ),
    )
    valid_bias = st.dictionaries(st.integers(0, 49_151).map(str), st.floats(-100, 100), max_size=4)
    return st.fixed_dictionaries(
        {},
        optional={
            "tools": or_anything(st.lists(tools, max_size=3)) if or_any else valid_tools,
            "tool_choice": tool_choices if or_any else st.sampled_from(["none", "auto", "required"]),
            "parallel_tool_calls": value(st.booleans()),
            "response_format": response_formats if or_any else valid_formats,
            "logprobs": value(st.booleans()),
            "top_logprobs": value(st.integers(0, 20)),
            "logit_bias": or_anything(logit_bias) if or_any else valid_bias,
            "presence_penalty": value(st.floats(-2, 2)),
            "frequency_penalty": value(st.floats(-2, 2)),
            "temperature": value(st.sampled_from([0.0, 1.0])),
            "n": st.integers(1, 3),
            "stream": st.booleans(),
            "stop": value(st.lists(st.text(max_size=3), max_size=2)),
        },
    )


FORMATS = [
    {"type": "text"},
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "maxItems": 2}}},
]


async def served_or_refused(gateway: httpx.AsyncClient, fields: dict[str, Any]) -> None:
    response = await gateway.post(CHAT_URL, content=json.dumps(chat_body(**fields)))
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"], error
    elif fields.get("stream"):
        last = response.text.split("data: [DONE]")[0].rsplit("data: ", 1)[-1]
        assert '"error"' not in last or '"invalid_request_error"' in last, response.text


@FUZZ
@given(fields=chat_fields(or_any=False))
async def test_admitted_tools_formats_and_logprobs_are_served_or_a_400(
    gateway: httpx.AsyncClient, fields: dict[str, Any]
) -> None:
    """Valid requests reach the engine: their schemas compile or get 400, their answers come."""
    if "tool_choice" in fields and "tools" not in fields:
        del fields["tool_choice"]  # the cross-field rules (400 otherwise)
    if not fields.get("logprobs"):
        fields.pop("top_logprobs", None)
    await served_or_refused(gateway, fields)


@FUZZ
@given(fields=chat_fields(or_any=True))
async def test_no_chat_request_with_tools_formats_or_logprobs_gets_a_5xx(
    gateway: httpx.AsyncClient, fields: dict[str, Any]
) -> None:
    await served_or_refused(gateway, fields)


prompts = st.one_of(
    st.text(max_size=20),
    st.lists(st.text(max_size=10), max_size=4),
    st.lists(st.integers(-5, 60_000), max_size=4),
    st.lists(st.lists(st.integers(0, 60_000), max_size=3), max_size=3),
    anything,
)


@FUZZ
@given(
    fields=st.fixed_dictionaries(
        {"prompt": prompts},
        optional={
            "max_tokens": or_anything(st.integers(1, 4)),
            "n": or_anything(st.integers(1, 3)),
            "echo": or_anything(st.booleans()),
            "logprobs": or_anything(st.integers(0, 20)),
            "best_of": or_anything(st.integers(1, 3)),
            "suffix": or_anything(st.sampled_from(["", "x"])),
            "stream": st.booleans(),
            "stop": or_anything(st.lists(st.text(max_size=3), max_size=2)),
            "logit_bias": or_anything(logit_bias),
            "temperature": or_anything(st.floats(0, 2)),
            "seed": or_anything(st.integers(0, 10)),
        },
    )
)
async def test_no_completions_request_gets_a_5xx(gateway: httpx.AsyncClient, fields: dict[str, Any]) -> None:
    body = {"model": TINY_MODEL, "max_tokens": 3} | fields
    response = await gateway.post("/v1/completions", content=json.dumps(body))
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"], error


@FUZZ
@given(
    fields=st.fixed_dictionaries(
        {"input": prompts},
        optional={
            "model": or_anything(st.just(EMBEDDER)),
            "encoding_format": or_anything(st.sampled_from(["float", "base64", "int8"])),
            "dimensions": or_anything(st.sampled_from([1, 64, 65])),
            "user": anything,
        },
    )
)
async def test_no_embeddings_request_gets_a_5xx(gateway: httpx.AsyncClient, fields: dict[str, Any]) -> None:
    response = await gateway.post("/v1/embeddings", content=json.dumps({"model": EMBEDDER} | fields))
    assert response.status_code in (200, 400, 404), response.text
    if response.status_code == 400:
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"], error


@FUZZ
@given(
    model=st.one_of(
        st.text(min_size=1, max_size=12), st.sampled_from(["..", "../models", TINY_MODEL, "%2e%2e"])
    )
)
async def test_model_ids_get_their_card_or_a_404(gateway: httpx.AsyncClient, model: str) -> None:
    """Percent-encoded whole (a client would otherwise resolve "..", as URLs do, before sending)."""
    response = await gateway.get(f"/v1/models/{quote(model, safe='').replace('.', '%2E')}")
    assert response.status_code in (200, 404), response.text
    if response.status_code == 200:
        assert response.json()["id"] == model
