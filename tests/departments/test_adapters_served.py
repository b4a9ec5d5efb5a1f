"""A department header really routes through its adapter, as PEFT itself would run it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI

from service.domain import ChatMessage

from ..conftest import TINY_MODEL
from .conftest import World

NEW_TOKENS = 10
QUESTION = "How do I reset my password?"


def body(question: str = QUESTION) -> dict[str, Any]:
    return {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": NEW_TOKENS,
        "min_tokens": NEW_TOKENS,
    }


def auth(world: World, who: str, department: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {world.keys[who]}"}
    return headers | ({"X-Department": department} if department else {})


def reference(model_dir: Path, adapter: Path | None, dept_app: FastAPI, question: str = QUESTION) -> str:
    """What transformers (+ PEFT's own adapter loading) generates for the same prompt."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    engine = dept_app.state.loragate.engine
    ids = torch.tensor([engine.encode([ChatMessage("user", question)])])
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval()
    out = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return str(engine._tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


async def ask(
    gateway: httpx.AsyncClient, headers: dict[str, str], question: str = QUESTION
) -> httpx.Response:
    response = await gateway.post("/v1/chat/completions", json=body(question), headers=headers)
    assert response.status_code == 200, response.text
    return response


def text(response: httpx.Response) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


async def test_header_routes_through_the_adapter(world, dept_app, gateway, wide_model_dir) -> None:
    response = await ask(gateway, auth(world, "acme", "ops"))
    assert response.headers["x-loragate-adapter"] == "acme-it-lora@1"
    assert response.headers["x-loragate-department"] == "ops"
    assert response.headers["x-loragate-template"] == "none"
    expected = reference(wide_model_dir, world.adapters["acme-it-lora@1"], dept_app)
    assert text(response) == expected
    assert expected != reference(wide_model_dir, None, dept_app), "the adapter must change the output"


async def test_one_batch_mixes_base_and_two_adapters(world, dept_app, gateway, wide_model_dir) -> None:
    questions = ["What is VPN?", "Print the invoice", "Hello there, how are you today?", "Hi"]
    cases = [
        (auth(world, "acme", "ops"), world.adapters["acme-it-lora@1"]),
        (auth(world, "globex"), world.adapters["globex-lora@1"]),
        (auth(world, "acme", "plain"), None),
        (auth(world, "globex", "sales"), world.adapters["globex-lora@1"]),
    ]
    responses = await asyncio.gather(
        *(ask(gateway, h, q) for (h, _), q in zip(cases, questions, strict=True))
    )
    for response, (_, adapter), question in zip(responses, cases, questions, strict=True):
        assert text(response) == reference(wide_model_dir, adapter, dept_app, question)


async def test_promote_and_rollback_are_seen_by_the_next_request(world, dept_app, gateway, wide_model_dir):
    try:
        world.registry.promote("acme-it", "acme-it-lora@2")
        promoted = await ask(gateway, auth(world, "acme", "ops"))
        assert promoted.headers["x-loragate-adapter"] == "acme-it-lora@2"
        assert text(promoted) == reference(wide_model_dir, world.adapters["acme-it-lora@2"], dept_app)
    finally:
        world.registry.rollback("acme-it")
    rolled_back = await ask(gateway, auth(world, "acme", "ops"))
    assert rolled_back.headers["x-loragate-adapter"] == "acme-it-lora@1"
    assert text(rolled_back) == reference(wide_model_dir, world.adapters["acme-it-lora@1"], dept_app)


async def test_adapters_beyond_the_limit_are_evicted(world, dept_app, gateway) -> None:
    slots = dept_app.state.loragate.engine._scheduler.lora
    world.registry.promote("acme-it", "acme-it-lora@2")
    try:
        for who, department in (("acme", "ops"), ("globex", None), ("acme", "ops")):
            await ask(gateway, auth(world, who, department))
    finally:
        world.registry.rollback("acme-it")
    await ask(gateway, auth(world, "acme", "ops"))
    assert len(slots.loaded) <= 2 and slots.evictions >= 1


@pytest.mark.parametrize("stream", [False, True])
async def test_tenant_cap_lowers_max_tokens(world, gateway, stream: bool) -> None:
    request = body() | {"max_tokens": 200, "min_tokens": 0, "ignore_eos": True, "stream": stream}
    if stream:
        request["stream_options"] = {"include_usage": True}
    response = await gateway.post("/v1/chat/completions", json=request, headers=auth(world, "acme", "ops"))
    assert response.status_code == 200
    if stream:
        usage = [line for line in response.text.splitlines() if '"usage": {' in line or '"usage":{' in line]
        assert '"completion_tokens":24' in usage[-1].replace(" ", "")
    else:
        assert response.json()["usage"]["completion_tokens"] == 24
        assert response.json()["choices"][0]["finish_reason"] == "length"
