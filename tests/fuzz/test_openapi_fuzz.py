"""Schemathesis over the gateway's own OpenAPI document: every /v1 operation, generated requests.

The server is real (uvicorn) on the tiny model, with a local embedding model, so that every
route reaches an engine. The property: whatever schemathesis sends, both requests valid per the
schema and its negative cases (wrong types, missing fields, out-of-range values), the answer is
never a 5xx, a 4xx is OpenAI's error envelope, and the server stays up. The context is small
(256 tokens), so a generated ``max_tokens`` in the thousands is a fast 400, not a long run.

Schemathesis's pytest plugin does not run on pytest 9.2 (it reads a removed private attribute),
so the operations' strategies are driven with hypothesis directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import API_KEY, LiveServer, make_settings

AUTH = {"Authorization": f"Bearer {API_KEY}"}
EXAMPLES = 100  # per operation and mode (hypothesis stops early where fewer distinct cases exist)
GENERATING = ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings")
ROUTES = (*GENERATING, "GET /v1/models/{model}")
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    values = make_settings(
        tiny_model_dir, max_context=256, local_embedding_model=tiny_model_dir, max_request_bytes=65_536
    )
    with LiveServer(values) as server:
        yield server


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(fuzz_server: LiveServer, mode: GenerationMode) -> None:
    root = fuzz_server.base_url.removesuffix("/v1")
    schema = schemathesis.openapi.from_url(f"{root}/openapi.json")
    ran: Counter[str] = Counter()
    unsatisfiable: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith("/v1/"):
            continue
        label = f"{operation.method.upper()} {operation.path}"  # as the counter names it

        @given(case=operation.as_strategy(generation_mode=mode))
        @FUZZ
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=root, headers=AUTH, timeout=60)
            ran[f"{case.method.upper()} {case.path}"] += 1
            assert response.status_code < 500, (case.body, response.text[:500])
            if response.status_code >= 400:
                assert {"message", "type", "param", "code"} <= set(response.json()["error"])

        try:
            check()
        except Unsatisfiable:  # nothing to generate in this mode (GET /v1/models has no input to break)
            unsatisfiable.append(label)
    print(f"\nno cases possible: {unsatisfiable}")
    print(f"\nschemathesis, {mode.value}: {dict(ran)} (total {sum(ran.values())})")
    assert all(ran[route] >= 5 for route in ROUTES if route not in unsatisfiable), ran
    assert not set(GENERATING) & set(unsatisfiable)
    assert httpx.get(f"{root}/health", timeout=5).status_code == 200
