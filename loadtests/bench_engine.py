"""Embedded engine throughput against plain transformers, side by side in one run.

    make bench            # or: .venv/bin/python -m loadtests.bench_engine --help

Every row decodes exactly ``--new-tokens`` tokens per prompt (EOS is masked
until then, in both the engine and ``generate``), greedy, on the same prompts:

- ``generate, sequential``: one ``model.generate`` call per prompt (the reference)
- ``generate, one batch``: one ``model.generate`` call over all prompts (the ceiling)
- ``engine, concurrency C``: C concurrent requests into the embedded engine
- ``decode steps only, batch B``: bare forward passes on a warm cache, no prefill and
  no sampling: the hardware's ceiling for any batching scheme on this machine

The latest report, with its machine and date: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from loadtests.common import PROMPTS, machine
from service.domain import ChatMessage, GenerationRequest, SamplingParams
from service.engines.local.engine import LocalEngine
from service.engines.local.kv_batch import slack_cache
from service.model_store import prepare_model


@dataclass
class Row:
    name: str
    concurrency: int
    requests: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def bench_decode_steps(engine: LocalEngine, batch: int, steps: int = 20) -> Row:
    """Bare decode steps on a warm 64-token cache, no prefill, no sampling: the hardware's ceiling."""
    assert engine._scheduler is not None
    model = engine._scheduler.model
    ids = torch.randint(0, 1000, (batch, 64), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cache = slack_cache(model.config)
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        start = time.perf_counter()
        for _ in range(steps):
            out = model(
                input_ids=out.logits[:, -1].argmax(-1, keepdim=True), past_key_values=cache, use_cache=True
            )
    return Row(f"decode steps only, batch {batch}", batch, 0, batch * steps, time.perf_counter() - start)


def bench_generate(engine: LocalEngine, prompts: list[str], new_tokens: int, batched: bool) -> Row:
    assert engine._scheduler is not None
    model, tokenizer = engine._scheduler.model, engine._tokenizer
    encoded = [engine.encode([ChatMessage("user", p)]) for p in prompts]
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    start = time.perf_counter()
    with torch.inference_mode():
        if batched:
            tokenizer.padding_side = "left"
            batch = tokenizer.pad({"input_ids": encoded}, return_tensors="pt")
            out = model.generate(**batch, **kwargs)
            tokens = (out.shape[1] - batch["input_ids"].shape[1]) * len(prompts)
        else:
            tokens = 0
            for ids in tqdm(encoded, desc="generate, sequential", leave=False):
                out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)), **kwargs)
                tokens += out.shape[1] - len(ids)
    name = "generate, one batch" if batched else "generate, sequential"
    return Row(name, len(prompts) if batched else 1, len(prompts), tokens, time.perf_counter() - start)


async def run_concurrent(
    name: str, concurrency: int, prompts: list[str], one: Callable[[str], Awaitable[int]]
) -> Row:
    limit = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(prompts), desc=f"{name}, concurrency {concurrency}", leave=False)

    async def guarded(prompt: str) -> int:
        async with limit:
            tokens = await one(prompt)
            bar.update()
            return tokens

    start = time.perf_counter()
    counts = await asyncio.gather(*(guarded(p) for p in prompts))
    bar.close()
    return Row(name, concurrency, len(prompts), sum(counts), time.perf_counter() - start)


def engine_request(prompt: str, new_tokens: int) -> GenerationRequest:
    sampling = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, temperature=0.0)
    return GenerationRequest("bench", [ChatMessage("user", prompt)], sampling)


async def bench_engine(engine: LocalEngine, prompts: list[str], new_tokens: int, concurrency: int) -> Row:
    async def one(prompt: str) -> int:
        tokens = 0
        async for delta in engine.stream(engine_request(prompt, new_tokens)):
            tokens += delta.completion_tokens
        return tokens

    return await run_concurrent("engine", concurrency, prompts, one)


def print_table(rows: list[Row], reference: Row) -> None:
    print(f"\n{'run':<30}{'conc.':>6}{'reqs':>6}{'tokens':>8}{'seconds':>9}{'tok/s':>9}{'vs seq':>8}")
    for r in rows:
        ratio = r.tokens_per_s / reference.tokens_per_s
        print(
            f"{r.name:<30}{r.concurrency:>6}{r.requests:>6}{r.tokens:>8}{r.seconds:>9.2f}"
            f"{r.tokens_per_s:>9.1f}{ratio:>7.1f}x"
        )


async def main(args: argparse.Namespace) -> None:
    path = args.model_path or prepare_model(Path(args.data_dir) / "models" / "smollm2-135m-instruct")
    engine = LocalEngine(
        Path(path),
        model_name="bench",
        dtype=args.dtype,
        threads=args.threads,
        max_batch_size=max(args.concurrency),
    )
    engine.load()
    prompts = (PROMPTS * (args.requests // len(PROMPTS) + 1))[: args.requests]
    await bench_engine(engine, prompts[:2], 8, 2)  # warm-up
    rows = [bench_generate(engine, prompts, args.new_tokens, batched=False)]
    rows.append(bench_generate(engine, prompts, args.new_tokens, batched=True))
    for c in args.concurrency:
        rows.append(await bench_engine(engine, prompts, args.new_tokens, c))
    rows += [bench_decode_steps(engine, 1), bench_decode_steps(engine, max(args.concurrency))]
    dtype = str(engine._scheduler.model.dtype).removeprefix("torch.")  # type: ignore[union-attr]
    await engine.close()
    print(f"\nSmolLM2-135M-Instruct, {dtype}, {args.new_tokens} new tokens per request, greedy; {machine()}")
    print_table(rows, rows[0])
    best = max(r.tokens_per_s for r in rows if r.name == "engine")
    ceiling = rows[-1].tokens_per_s / rows[-2].tokens_per_s
    print(
        f"\nengine at concurrency {max(args.concurrency)}: {best / rows[0].tokens_per_s:.1f}x sequential "
        f"generate (target: 8x); bare decode steps, batch {max(args.concurrency)} vs 1: {ceiling:.1f}x"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"machine": machine(), "rows": [asdict(r) for r in rows]}, indent=2)
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", type=Path, help="default: the packaged SmolLM2, prepared under --data-dir")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--json", default="bench-results/engine.json", help="also write the figures here")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
