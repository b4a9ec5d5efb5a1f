"""`loragate train rlaif`: an L3 adapter from AI feedback.

    loragate train rlaif --recipe adapters/recipes/it-helpdesk.yaml [--set judge.kind=llm]

1. Sample two answers per training prompt from the L2 adapter (temperature `rlaif.temperature`).
2. The recipe's judge (`judge.kind`: reward model, base model with a rubric, or format check)
   picks the better one (format first: see `judges`); ties, and pairs that the format did not
   decide and whose scores differ by less than `rlaif.min_margin`, are dropped. Every verdict
   is kept in the run folder (`verdicts.jsonl`).
3. DPO (or `rlaif.method`) on the judged pairs, continuing the L2 adapter as `train dpo` does.

The samples and verdicts are written before training, so a resumed run reuses them.
"""

from __future__ import annotations

import json
import logging
import random
from typing import Any

from .data import PreferencePair, prompt_text
from .dpo import train_preferences
from .generation import generate
from .judges import Verdict, judge_inputs, make_judge
from .modeling import load_causal_lm, load_tokenizer, setup_torch
from .recipe import Recipe
from .runs import Run, StepError, finished_adapter, input_digests
from .splits import instruction_splits

log = logging.getLogger("adapters")


def sample_prompts(recipe: Recipe) -> list[str]:
    train, _ = instruction_splits(recipe)
    prompts = sorted({prompt_text(row) for row in train})
    random.Random(recipe.seed).shuffle(prompts)
    return prompts[: recipe.rlaif.prompts]


def sample_pairs(recipe: Recipe, prompts: list[str]) -> tuple[list[str], list[str]]:
    from peft import PeftModel

    setup_torch(recipe)
    tokenizer = load_tokenizer(recipe.base_model)
    model = PeftModel.from_pretrained(
        load_causal_lm(recipe.base_model, tokenizer), finished_adapter(recipe, "sft")
    )
    spec = recipe.rlaif
    kwargs = {"max_new_tokens": spec.max_new_tokens, "temperature": spec.temperature}
    first = generate(model, tokenizer, prompts, seed=recipe.seed, desc="sample A", **kwargs)
    second = generate(model, tokenizer, prompts, seed=recipe.seed + 1, desc="sample B", **kwargs)
    return first, second


def judge_samples(recipe: Recipe, prompts: list[str], first: list[str], second: list[str]) -> list[dict]:
    """One record per prompt: both answers, the judge's verdict, and whether the pair is kept."""
    tokenizer = load_tokenizer(recipe.base_model)
    judge = make_judge(recipe, tokenizer)
    verdicts: list[Verdict] = judge.compare(prompts, first, second)
    records = []
    for prompt, a, b, verdict in zip(prompts, first, second, verdicts, strict=True):
        scores = verdict.detail
        margin = abs(scores["score_a"] - scores["score_b"]) if "score_a" in scores else None
        by_format = scores.get("format_a", 0.0) != scores.get("format_b", 0.0)
        kept = verdict.preference != 0.5 and (
            by_format or margin is None or margin >= recipe.rlaif.min_margin
        )
        record = {"prompt": prompt, "answer_a": a, "answer_b": b, "judge": judge.name, "kept": kept}
        records.append(record | verdict.to_json())
    return records


def kept_pairs(records: list[dict]) -> list[PreferencePair]:
    pairs = []
    for r in records:
        if r["kept"]:
            a_wins = r["preference"] > 0.5
            chosen, rejected = (r["answer_a"], r["answer_b"]) if a_wins else (r["answer_b"], r["answer_a"])
            pairs.append(PreferencePair(prompt=r["prompt"], chosen=chosen, rejected=rejected))
    return pairs


def run_rlaif(recipe: Recipe, *, force: bool = False) -> dict[str, Any]:
    run = Run(recipe, "rlaif", input_digests(recipe, "sft", *judge_inputs(recipe)))
    if (cached := run.cached(force)) is not None:
        return cached
    run.start(force)
    verdicts_file = run.dir / "verdicts.jsonl"
    if verdicts_file.is_file():
        records = [json.loads(line) for line in verdicts_file.read_text().splitlines()]
        log.info("rlaif: reusing %d judged samples from %s", len(records), verdicts_file)
    else:
        prompts = sample_prompts(recipe)
        first, second = sample_pairs(recipe, prompts)
        records = judge_samples(recipe, prompts, first, second)
        verdicts_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    pairs = kept_pairs(records)
    if not pairs:
        raise StepError(
            f"rlaif: the {recipe.judge.kind} judge preferred no answer over another; nothing to train"
        )
    figures = train_preferences(recipe, run, recipe.rlaif, pairs)
    judge = records[0].get("judge", recipe.judge.kind)
    figures.update({"judge": judge, "sampled_prompts": len(records), "judged_pairs": len(pairs)})
    log.info("rlaif: %d of %d pairs kept; adapter in %s", len(pairs), len(records), run.adapter)
    return run.finish(figures)
