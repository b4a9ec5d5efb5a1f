"""/v1/embeddings through the openai SDK and real uvicorn servers.

A local embedding model (the tiny Llama, mean-pooled) in one gateway; a second gateway relays to
the first (loragate in front of loragate, as it would front vLLM); an unreachable upstream; none
configured. The upstream's error mapping has its own unit tests.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from transformers import AutoTokenizer

from service.app import create_app
from service.config import Settings
from service.embeddings.relay import UpstreamEmbedder, upstream_error
from service.errors import (
    InvalidRequestError,
    LoragateError,
    ModelNotFoundError,
    RateLimitError,
    UpstreamError,
)
from service.protocol_completions import EmbeddingRequest
from tests.api.conftest import FakeServer
from tests.api.helpers import assert_envelope
from tests.conftest import API_KEY, LiveServer, free_port
from tests.fakes import FakeEngine

EMBEDDER = "tiny-embed"
DIMENSIONS = 64  # the tiny Llama's hidden size
TEXTS = ["The cat sat on the mat.", "Quarterly revenue grew by four percent.", "a"]


def sdk(base_url: str, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)


def gateway(**settings: Any) -> LiveServer:
    """A live gateway on the fake engine (its chat does not matter here) with these settings."""
    engine = FakeEngine()
    config = Settings(api_key=API_KEY, model_name=engine.model_name, **settings)
    return LiveServer(app=create_app(config, engine_factory=lambda _: engine), ready_path="/health")


@pytest.fixture(scope="module")
def local(tiny_model_dir: Path) -> Iterator[LiveServer]:
    with gateway(local_embedding_model=tiny_model_dir, embeddings_model=EMBEDDER) as server:
        yield server


@pytest.fixture(scope="module")
def relay(local: LiveServer) -> Iterator[LiveServer]:
    """A gateway that relays to ``local``, with the key ``local`` wants."""
    upstream = local.base_url.removesuffix("/v1")
    with gateway(
        embeddings_upstream=upstream, embeddings_model=EMBEDDER, embeddings_upstream_api_key=API_KEY
    ) as s:
        yield s


def vectors(client: openai.OpenAI, texts: list[str], **fields: Any) -> np.ndarray:
    result = client.embeddings.create(model=EMBEDDER, input=texts, **fields)
    assert [d.index for d in result.data] == list(range(len(texts)))
    return np.array([d.embedding for d in result.data], dtype=np.float64)


# -- the local model -------------------------------------------------------------------------------
def test_shape_norm_and_usage(local: LiveServer, tiny_model_dir: Path) -> None:
    result = sdk(local.base_url).embeddings.create(model=EMBEDDER, input=TEXTS, encoding_format="float")
    assert result.object == "list" and result.model == EMBEDDER
    assert {d.object for d in result.data} == {"embedding"}
    matrix = np.array([d.embedding for d in result.data])
    assert matrix.shape == (3, DIMENSIONS)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(matrix[0], matrix[1])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokens = sum(len(tokenizer(text).input_ids) for text in TEXTS)
    assert result.usage.prompt_tokens == result.usage.total_tokens == tokens


def test_deterministic_alone_or_in_a_batch(local: LiveServer) -> None:
    client = sdk(local.base_url)
    batch = vectors(client, TEXTS, encoding_format="float")
    assert np.array_equal(batch, vectors(client, TEXTS, encoding_format="float"))
    for i, text in enumerate(TEXTS):  # padding (the shorter rows) does not change a vector
        alone = (
            client.embeddings.create(model=EMBEDDER, input=text, encoding_format="float").data[0].embedding
        )
        assert np.allclose(alone, batch[i], atol=1e-5)


def test_base64_decodes_to_the_same_floats(local: LiveServer) -> None:
    client = sdk(local.base_url)
    floats = vectors(client, TEXTS, encoding_format="float")
    assert np.array_equal(vectors(client, TEXTS), floats)  # the SDK asks for base64 and decodes it itself
    raw = httpx.post(
        f"{local.base_url}/embeddings",
        json={"model": EMBEDDER, "input": TEXTS, "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ).json()
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]]
    assert np.array_equal(np.array(decoded, dtype=np.float64), floats)


def test_the_model_s_own_dimensions_only(local: LiveServer) -> None:
    client = sdk(local.base_url)
    assert vectors(client, ["x"], dimensions=DIMENSIONS).shape == (1, DIMENSIONS)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=EMBEDDER, input="x", dimensions=32)
    assert (caught.value.param, caught.value.code) == ("dimensions", "unsupported_parameter")


BAD: list[Any] = [
    pytest.param({"input": [464, 3139]}, "input", "unsupported_parameter", id="token-ids"),
    pytest.param({"input": [[464], [3139]]}, "input", "unsupported_parameter", id="token-id-lists"),
    pytest.param({"input": ""}, "input", None, id="empty-string"),
    pytest.param({"input": []}, "input", None, id="no-input"),
    pytest.param({"input": ["x"] * 2049}, "input", None, id="over-2048-inputs"),
    pytest.param({"input": ["fine", "word " * 1500]}, "input", None, id="over-the-model-s-length"),
    pytest.param({"encoding_format": "int8"}, "encoding_format", None, id="unknown-format"),
    pytest.param({"extra_body": {"truncate": True}}, "truncate", "unknown_parameter", id="unknown-field"),
]


@pytest.mark.parametrize(("fields", "param", "code"), BAD)
def test_bad_requests_are_400s_naming_the_field(
    local: LiveServer, fields: dict[str, Any], param: str, code: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(local.base_url).embeddings.create(**({"model": EMBEDDER, "input": "x"} | fields))
    assert caught.value.param == param
    if code is not None:
        assert caught.value.code == code


def test_another_model_name_is_404(local: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(local.base_url).embeddings.create(model="text-embedding-3-small", input="x")
    assert caught.value.code == "model_not_found" and EMBEDDER in caught.value.message


def test_listed_and_retrievable_for_every_key(local: LiveServer) -> None:
    client = sdk(local.base_url)
    assert [m.id for m in client.models.list().data] == ["fake-model", EMBEDDER]
    assert client.models.retrieve(EMBEDDER).id == EMBEDDER


def test_metrics_label_embeddings_as_such(local: LiveServer) -> None:
    sdk(local.base_url).embeddings.create(model=EMBEDDER, input=TEXTS)
    text = httpx.get(local.base_url.removesuffix("/v1") + "/metrics").text
    labels = 'adapter="embedding",department="general",status="200",tenant="default"'
    assert f"loragate_requests_total{{{labels}}}" in text
    assert 'loragate_prompt_tokens_total{adapter="embedding",department="general",tenant="default"}' in text


# -- relayed ---------------------------------------------------------------------------------------
def test_the_relay_answers_as_the_upstream_does(relay: LiveServer, local: LiveServer) -> None:
    here, there = sdk(relay.base_url), sdk(local.base_url)
    for fields in ({"encoding_format": "float"}, {}):  # {}: the SDK's base64
        assert np.array_equal(vectors(here, TEXTS, **fields), vectors(there, TEXTS, **fields))
    single = here.embeddings.create(model=EMBEDDER, input="x", encoding_format="float")
    assert single.model == EMBEDDER and len(single.data) == 1 and single.usage.prompt_tokens > 0


def test_the_upstream_s_400s_pass_through(relay: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(relay.base_url).embeddings.create(model=EMBEDDER, input="x", dimensions=32)
    assert (caught.value.param, caught.value.code) == ("dimensions", "unsupported_parameter")


def test_the_relay_checks_the_name_itself(relay: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk(relay.base_url).embeddings.create(model="other", input="x")


def test_the_relay_refuses_token_ids_itself(relay: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(relay.base_url).embeddings.create(model=EMBEDDER, input=[1, 2, 3])
    assert caught.value.code == "unsupported_parameter"


def test_a_wrong_upstream_key_is_a_502_not_the_client_s_401(local: LiveServer) -> None:
    upstream = local.base_url.removesuffix("/v1")
    with gateway(
        embeddings_upstream=upstream, embeddings_model=EMBEDDER, embeddings_upstream_api_key="sk-no"
    ) as s:
        with pytest.raises(openai.InternalServerError) as caught:
            sdk(s.base_url).embeddings.create(model=EMBEDDER, input="x")
    assert caught.value.status_code == 502 and "credentials" in caught.value.message


def test_an_unreachable_upstream_is_a_502() -> None:
    with gateway(embeddings_upstream=f"http://127.0.0.1:{free_port()}", embeddings_model=EMBEDDER) as server:
        with pytest.raises(openai.InternalServerError) as caught:
            sdk(server.base_url).embeddings.create(model=EMBEDDER, input="x")
    assert caught.value.status_code == 502 and caught.value.code == "upstream_error"


@pytest.mark.parametrize(
    ("status", "body", "error", "param"),
    [
        (400, '{"error": {"message": "too long", "param": "input"}}', InvalidRequestError, "input"),
        (400, '{"object": "error", "message": "bad"}', InvalidRequestError, None),  # vLLM's older form
        (404, '{"error": {"message": "no model"}}', ModelNotFoundError, "model"),
        (429, "slow down", RateLimitError, None),
        (401, '{"error": {"message": "bad key"}}', UpstreamError, None),
        (500, "boom", UpstreamError, None),
        (503, "", UpstreamError, None),
    ],
)
def test_upstream_errors_map_as_the_vllm_backend_s(
    status: int, body: str, error: type[LoragateError], param: str | None
) -> None:
    mapped = upstream_error(status, body)
    assert type(mapped) is error and mapped.param == param and mapped.message


async def test_the_relay_sends_the_configured_name_and_key() -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"object": "list", "data": [], "model": "served-name", "usage": {}})

    embedder = UpstreamEmbedder(
        "http://upstream:8000/v1",
        model_name="served-name",
        api_key="sk-up",
        transport=httpx.MockTransport(answer),
    )
    body = EmbeddingRequest(model="served-name", input=["a", "b"], encoding_format="base64")
    assert (await embedder.embed(body, ["a", "b"]))["model"] == "served-name"
    await embedder.close()
    (request,) = sent
    assert str(request.url) == "http://upstream:8000/v1/embeddings"
    assert request.headers["authorization"] == "Bearer sk-up"
    assert request.read() == b'{"model":"served-name","input":["a","b"],"encoding_format":"base64"}'


@pytest.mark.parametrize("answer", ["not json", '{"data": "nope"}', "[]"])
async def test_a_broken_upstream_answer_is_a_502(answer: str) -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, text=answer))
    embedder = UpstreamEmbedder("http://upstream", model_name="m", transport=transport)
    with pytest.raises(UpstreamError):
        await embedder.embed(EmbeddingRequest(model="m", input="x"), ["x"])
    await embedder.close()


# -- none configured -------------------------------------------------------------------------------
def test_none_configured_is_a_404_that_says_how(fake_server: FakeServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(fake_server.base_url).embeddings.create(model="text-embedding-3-small", input="x")
    message = caught.value.message
    assert "LORAGATE_EMBEDDINGS_UPSTREAM" in message and "LORAGATE_LOCAL_EMBEDDING_MODEL" in message
    assert [m.id for m in sdk(fake_server.base_url).models.list().data] == ["fake-model"]


def test_none_configured_needs_a_key_first(fake_server: FakeServer) -> None:
    response = httpx.post(f"{fake_server.base_url}/embeddings", json={"model": "m", "input": "x"})
    assert_envelope(response, 401, code="invalid_api_key")
