"""Structured output on the real SmolLM2-135M: a forced tool call and a JSON object, valid and sensible."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema
import pytest

from service.domain import ChatMessage, Constraint, GenerationRequest, SamplingParams
from service.engines.local.engine import LocalEngine

from .helpers import drain

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CALL = {  # what the planner asks for a named tool choice
    "type": "object",
    "properties": {"name": {"const": "get_weather"}, "arguments": WEATHER["function"]["parameters"]},  # type: ignore[index]
    "required": ["name", "arguments"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
async def smollm2(smollm2_dir: Path) -> AsyncIterator[LocalEngine]:
    local = LocalEngine(smollm2_dir, model_name="smollm2", dtype="float32", device="cpu", max_batch_size=8)
    local.load()
    yield local
    await local.close()


async def test_a_forced_call_names_the_city(smollm2: LocalEngine) -> None:
    request = GenerationRequest(
        "call",
        [ChatMessage("user", "What is the weather in Paris right now?")],
        SamplingParams(max_tokens=64, temperature=0.0),
        tools=(WEATHER,),
        tool_choice="none",
        constraint=Constraint("json_schema", CALL),
    )
    choice = (await drain(smollm2.stream(request)))[0]
    assert choice.finish_reason == "stop"
    call = json.loads(choice.text)
    jsonschema.validate(call, CALL)
    assert "Paris" in call["arguments"]["city"]


@pytest.mark.parametrize("seed", [None, 3])
async def test_schema_output_validates(smollm2: LocalEngine, seed: int | None) -> None:
    sampling = SamplingParams(max_tokens=96, temperature=0.0 if seed is None else 0.8, seed=seed)
    messages = [ChatMessage("user", "Describe the city of Paris as a JSON object.")]
    schema = {  # bounded: a 135M model left free repeats digits until max_tokens
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "country": {"type": "string", "maxLength": 40},
            "population": {"type": "integer", "minimum": 0, "maximum": 100000000},
        },
        "required": ["name", "country", "population"],
        "additionalProperties": False,
    }
    shaped = GenerationRequest("s", messages, sampling, n=2, constraint=Constraint("json_schema", schema))
    for choice in (await drain(smollm2.stream(shaped))).values():
        assert choice.finish_reason == "stop", choice.text
        jsonschema.validate(json.loads(choice.text), schema)


async def test_json_object_output_parses(smollm2: LocalEngine) -> None:
    messages = [ChatMessage("user", "Describe Paris as JSON with its city name, population and country.")]
    request = GenerationRequest(
        "o", messages, SamplingParams(max_tokens=96, temperature=0.0), constraint=Constraint("json_object")
    )
    choice = (await drain(smollm2.stream(request)))[0]
    assert choice.finish_reason == "stop", choice.text
    assert "Paris" in json.loads(choice.text).values()
