"""What grammar-constrained decoding costs the embedded engine: free streams against JSON-schema ones.

    .venv/bin/python -m loadtests.bench_constrained      # part of `make bench`

Every stream decodes exactly ``--new-tokens`` tokens, greedy, at ``--concurrency`` concurrent
requests (the issue's bar: constrained streams keep >= 0.8x the tokens/s of free streams):

- ``free``: no constraint (EOS masked until the last token)
- ``json_schema, string-heavy``: one long string field: the mask is wide (almost any token)
- ``json_schema, structure-heavy``: an array of small objects: keys, numbers, punctuation
- ``half free, half constrained``: both kinds in the same batch, sharing each decode step

The schemas cannot complete within the budget, so every stream has the same length and the
figures compare the decode steps alone. Then the grammar compile time, cold and cached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from loadtests.bench_engine import Row, engine_request, run_concurrent
from loadtests.common import PROMPTS, machine
from service.domain import Constraint, GenerationRequest
from service.engines.local.engine import LocalEngine
from service.model_store import prepare_model

STRING_HEAVY = {
    "type": "object",
    "properties": {"answer": {"type": "string", "minLength": 2000, "maxLength": 4000}},
    "required": ["answer"],
    "additionalProperties": False,
}
STRUCTURE_HEAVY = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "minItems": 100,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 12},
                    "qty": {"type": "integer", "minimum": 0, "maximum": 999},
                    "ok": {"type": "boolean"},
                },
                "required": ["name", "qty", "ok"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["items"],
    "additionalProperties": False,
}
TOOL_CALL = {  # a typical forced tool call, for the compile times
    "type": "object",
    "properties": {
        "name": {"const": "get_weather"},
        "arguments": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "the city"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}


def request(prompt: str, new_tokens: int, schema: dict[str, object] | None) -> GenerationRequest:
    plain = engine_request(prompt, new_tokens)
    if schema is None:
        return plain
    # min_tokens does not apply under a grammar: these schemas run past the budget instead
    return replace(plain, constraint=Constraint("json_schema", schema))


async def bench(
    engine: LocalEngine,
    name: str,
    prompts: list[str],
    args: argparse.Namespace,
    schemas: list[dict[str, object] | None],
) -> Row:
    async def one(prompt: str) -> int:
        schema = schemas[prompts.index(prompt) % len(schemas)]
        tokens = 0
        async for delta in engine.stream(request(prompt, args.new_tokens, schema)):
            tokens += delta.completion_tokens
            if delta.finish_reason is not None and delta.finish_reason != "length":
                raise RuntimeError(f"{name}: a stream ended early ({delta.finish_reason})")
        return tokens

    return await run_concurrent(name, args.concurrency, prompts, one)


def compile_times(engine: LocalEngine) -> list[tuple[str, float]]:
    grammars = engine.grammars
    assert grammars is not None
    out = []
    for label, constraint in [
        ("first compile (json_object, with the one-time tokenizer setup)", Constraint("json_object")),
        ("tool-call schema, cold", Constraint("json_schema", TOOL_CALL)),
        ("tool-call schema, cached", Constraint("json_schema", TOOL_CALL)),
        ("structure-heavy schema, cold", Constraint("json_schema", {**STRUCTURE_HEAVY, "title": "cold"})),
    ]:
        start = time.perf_counter()
        grammars.get(constraint)
        out.append((label, time.perf_counter() - start))
    return out


async def main(args: argparse.Namespace) -> None:
    path = args.model_path or prepare_model(Path(args.data_dir) / "models" / "smollm2-135m-instruct")
    engine = LocalEngine(
        Path(path),
        model_name="bench",
        dtype=args.dtype,
        threads=args.threads,
        max_batch_size=args.concurrency,
    )
    engine.load()
    compiled = compile_times(engine)
    prompts = [
        f"{p} (#{i})" for i, p in enumerate((PROMPTS * (args.requests // len(PROMPTS) + 1))[: args.requests])
    ]
    await bench(engine, "warm-up", prompts[:4], argparse.Namespace(**{**vars(args), "new_tokens": 8}), [None])
    rows = [await bench(engine, "free", prompts, args, [None])]
    rows.append(await bench(engine, "json_schema, string-heavy", prompts, args, [STRING_HEAVY]))
    rows.append(await bench(engine, "json_schema, structure-heavy", prompts, args, [STRUCTURE_HEAVY]))
    rows.append(await bench(engine, "half free, half constrained", prompts, args, [None, STRUCTURE_HEAVY]))
    dtype = str(engine._scheduler.model.dtype).removeprefix("torch.")  # type: ignore[union-attr]
    await engine.close()
    print(f"\nSmolLM2-135M-Instruct, {dtype}, {args.new_tokens} new tokens per request, greedy; {machine()}")
    print(f"\n{'run':<30}{'conc.':>6}{'reqs':>6}{'tokens':>8}{'seconds':>9}{'tok/s':>9}{'vs free':>8}")
    for r in rows:
        print(
            f"{r.name:<30}{r.concurrency:>6}{r.requests:>6}{r.tokens:>8}{r.seconds:>9.2f}"
            f"{r.tokens_per_s:>9.1f}{r.tokens_per_s / rows[0].tokens_per_s:>7.2f}x"
        )
    worst = min(r.tokens_per_s for r in rows[1:3]) / rows[0].tokens_per_s
    print(f"\nconstrained vs free at concurrency {args.concurrency}: {worst:.2f}x at worst (target: >= 0.8x)")
    print("\ngrammar compile (llguidance):")
    for label, seconds in compiled:
        print(f"  {label:<64}{seconds * 1000:>9.2f} ms")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        figures = {"machine": machine(), "rows": [asdict(r) for r in rows], "compile_seconds": dict(compiled)}
        Path(args.json).write_text(json.dumps(figures, indent=2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", type=Path, help="default: the packaged SmolLM2, prepared under --data-dir")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--json", default="bench-results/constrained.json", help="also write the figures here")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
