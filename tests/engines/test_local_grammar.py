"""Grammar-constrained decoding in the embedded engine: valid JSON per row, in the shared batch."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import jsonschema
import pytest

from service.domain import Constraint, GenerationRequest
from service.engines.local.engine import LocalEngine
from service.engines.local.grammar import Grammar, GrammarCache, GrammarError, RowGrammar
from service.engines.local.scheduler import Job
from service.errors import EngineFailure, InvalidRequestError

from .helpers import Choice, drain, make_request, reference
from .test_isolation import collect

# Bounded schemas: whatever a random model picks, the grammar ends them within the token budget.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "ok"],
    "additionalProperties": False,
}
TAGS = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
    },
    "required": ["color", "tags"],
    "additionalProperties": False,
}
CALL = {
    "type": "object",
    "properties": {
        "name": {"const": "get_weather"},
        "arguments": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}
EITHER = {
    "anyOf": [
        {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["a"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"b": {"type": "boolean"}},
            "required": ["b"],
            "additionalProperties": False,
        },
    ]
}
SCHEMAS = {"person": PERSON, "tags": TAGS, "call": CALL, "either": EITHER}


def constrained(
    content: str, schema: dict[str, Any] | None, max_tokens: int = 96, **sampling: Any
) -> GenerationRequest:
    request = make_request(content, max_tokens, **sampling)
    kind = "json_schema" if schema is not None else "json_object"
    return replace(request, constraint=Constraint(kind, schema))


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "seed": 1}, {"temperature": 1.5, "seed": 7}])
async def test_output_matches_the_schema(engine: LocalEngine, name: str, sampling: dict[str, Any]) -> None:
    schema = SCHEMAS[name]
    request = constrained("Give me some JSON.", schema, n=2, **sampling)
    choices = await drain(engine.stream(request))
    for choice in choices.values():
        assert choice.finish_reason == "stop", choice.text
        jsonschema.validate(json.loads(choice.text), schema)


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.7, "seed": 0}, {"temperature": 1.0, "seed": 3}])
async def test_json_object_output_is_an_object(engine: LocalEngine, sampling: dict[str, Any]) -> None:
    """Any object: unbounded (a random model's sampled keys may run out of tokens); what ends is an object."""
    request = constrained("Any JSON.", None, 48, n=2, **sampling)
    choices = (await drain(engine.stream(request))).values()
    for choice in choices:
        assert choice.text.startswith("{")
        if choice.finish_reason == "stop" or not sampling:
            assert isinstance(json.loads(choice.text), dict)


def submit_jobs(
    engine: LocalEngine, requests: list[GenerationRequest], grammars: dict[int, Grammar] | None = None
) -> list[Job]:
    """Queue the jobs under the scheduler's lock (one prefill), their grammars compiled first.

    ``grammars``: the grammar of the i-th request, instead of its compiled constraint.
    """
    scheduler, cache = engine._scheduler, engine.grammars
    assert scheduler is not None and cache is not None
    loop = asyncio.get_running_loop()
    chosen = grammars or {}
    jobs = [
        Job(
            request=r,
            prompt_ids=engine.encode(r.messages),
            loop=loop,
            grammar=chosen.get(i) or (cache.get(r.constraint) if r.constraint is not None else None),
        )
        for i, r in enumerate(requests)
    ]
    with scheduler._wake:
        for job in jobs:
            scheduler.submit(job)
    return jobs


@pytest.fixture
def decode_batches(engine: LocalEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The batch size of every decode step (a forward pass of one token per row)."""
    assert engine._scheduler is not None
    model = engine._scheduler.model
    forward = model.forward
    sizes: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        if kwargs["input_ids"].shape[1] == 1:
            sizes.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    yield sizes


async def test_constrained_and_free_rows_share_decode_steps(
    engine: LocalEngine, reference_model: Any, tokenizer: Any, decode_batches: list[int]
) -> None:
    free = make_request("Tell me about the weather.", 24, ignore_eos=True)
    expected = reference(reference_model, tokenizer, engine.encode(free.messages), 24)
    shaped = constrained("Give me some JSON.", PERSON)
    free_job, shaped_job = submit_jobs(engine, [free, shaped])
    free_out, shaped_out = await asyncio.gather(collect(free_job), collect(shaped_job))
    assert free_out == {0: expected}  # greedy text unchanged beside a constrained row
    jsonschema.validate(json.loads(shaped_out[0].text), PERSON)
    shaped_tokens = shaped_out[0].completion_tokens
    both = min(shaped_tokens, 24) - 1  # decode steps while both rows ran (the first token is the prefill's)
    assert both > 4 and decode_batches[:both] == [2] * both
    assert len(decode_batches) == max(shaped_tokens, 24) - 1  # no step of its own for either row


async def test_greedy_constrained_output_is_the_models_best_valid_json(engine: LocalEngine) -> None:
    """Greedy under a grammar is deterministic, and the first token (picked at prefill) is constrained."""
    request = constrained("Give me some JSON.", TAGS)
    first = await drain(engine.stream(request))
    assert first[0].text.startswith('{"color":')
    assert await drain(engine.stream(request)) == first


def test_compiled_grammars_are_cached_per_schema(engine: LocalEngine) -> None:
    grammars = engine.grammars
    assert grammars is not None
    schema = {"type": "object", "properties": {"cache_probe": {"type": "integer"}}}
    before = grammars.compiled
    first = grammars.get(Constraint("json_schema", schema))
    again = grammars.get(Constraint("json_schema", json.loads(json.dumps(schema, sort_keys=True))))
    assert first is again and grammars.compiled == before + 1
    grammars.get(Constraint("json_object"))
    grammars.get(Constraint("json_object"))
    assert grammars.compiled <= before + 2


def test_the_cache_keeps_the_last_ones(tokenizer: Any) -> None:
    cache = GrammarCache(tokenizer, len(tokenizer), [tokenizer.eos_token_id], size=2)
    constraints = [
        Constraint("json_schema", {"type": "object", "properties": {f"k{i}": {}}}) for i in range(3)
    ]
    grammars = [cache.get(c) for c in constraints]
    assert cache.get(constraints[2]) is grammars[2] and cache.get(constraints[1]) is grammars[1]
    assert cache.compiled == 3
    assert cache.get(constraints[0]) is not grammars[0] and cache.compiled == 4  # evicted, compiled again


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "nonsense"},
        {"$ref": "#/definitions/missing"},
        {"type": "string", "pattern": "(("},
        {"type": "object", "properties": {"a": {"minLength": "x"}}},
    ],
)
async def test_a_schema_that_cannot_compile_is_a_400(engine: LocalEngine, schema: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await drain(engine.stream(constrained("JSON please.", schema)))
    assert caught.value.param == "response_format" and caught.value.status_code == 400
    assert (await drain(engine.stream(make_request("Hi", 2))))[0].finish_reason is not None


class BrokenRow(RowGrammar):
    """A matcher that breaks at its third token."""

    tokens = 0

    def accept(self, token: int) -> None:
        self.tokens += 1
        if self.tokens == 3:
            raise GrammarError("injected matcher failure")
        super().accept(token)


class BrokenGrammar(Grammar):
    def row(self) -> RowGrammar:
        return BrokenRow(self._template.deep_copy(), self.vocab_size)


async def test_a_failing_matcher_fails_its_row_alone(
    engine: LocalEngine, reference_model: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = make_request("Tell me about the weather.", 24, ignore_eos=True)
    expected = reference(reference_model, tokenizer, engine.encode(free.messages), 24)
    healthy, broken = constrained("JSON.", PERSON), constrained("JSON.", TAGS, n=2)
    grammars = engine.grammars
    assert grammars is not None and broken.constraint is not None
    good = grammars.get(broken.constraint)
    jobs = submit_jobs(engine, [free, healthy, broken], {2: BrokenGrammar(good._template, good.vocab_size)})
    outcomes = await asyncio.gather(*(collect(job) for job in jobs), return_exceptions=True)
    assert outcomes[0] == {0: expected}
    assert isinstance(outcomes[1], dict)
    jsonschema.validate(json.loads(outcomes[1][0].text), PERSON)
    assert isinstance(outcomes[2], GrammarError)
    monkeypatch.setattr(grammars, "get", lambda constraint: BrokenGrammar(good._template, good.vocab_size))
    monkeypatch.setattr(grammars, "cached", lambda constraint: None)  # the engine's fast path for hits
    with pytest.raises(EngineFailure):  # through the engine's stream: a 500 for that request only
        await drain(engine.stream(broken))


async def test_constrained_rows_ignore_min_tokens_and_ignore_eos(engine: LocalEngine) -> None:
    """The grammar decides where the output ends: a complete JSON value finishes the row."""
    request = constrained("JSON.", EITHER, 64, min_tokens=40, ignore_eos=True)
    choice: Choice = (await drain(engine.stream(request)))[0]
    assert choice.finish_reason == "stop" and choice.completion_tokens < 40
    jsonschema.validate(json.loads(choice.text), EITHER)
