"""`loragate train eval`: base vs L2 vs L3 on the held-out split.

    loragate train eval --recipe adapters/recipes/it-helpdesk.yaml

For the base model, the L2 adapter (`sft`) and every finished L3 run (`dpo`, `rlaif`, `rl`):
response loss and perplexity (teacher-forced, answer tokens only), greedy answers to the held-out
prompts (fp32), their format compliance and, per category, ROUGE-L against the reference. Then
win rates, L2 against the base and each L3 against L2, by the recipe's judge and by the reward
model and the format check when there are. Writes report.json, report.md, report.png and
answers.jsonl to runs/<department>/eval/.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.registry import WEIGHTS, sha256_of

from .data import InstructionRow, prompt_text
from .generation import generate, response_loss
from .judges import FormatFirst, Judge, format_check, make_judge
from .metrics import rouge_l, win_rate
from .modeling import load_causal_lm, load_tokenizer, setup_torch
from .recipe import Recipe
from .report import write_report
from .runs import Run, finished_adapter, input_digests
from .splits import instruction_splits

log = logging.getLogger("adapters")
L3_STEPS = ("dpo", "rlaif", "rl")


def trained_adapters(recipe: Recipe) -> dict[str, Path]:
    """sft (required) and whichever L3 runs have finished."""
    found = {"sft": finished_adapter(recipe, "sft")}
    for step in L3_STEPS:
        folder = recipe.run_dir(step)
        if (folder / "metrics.json").is_file() and (folder / "adapter").is_dir():
            found[step] = folder / "adapter"
    return found


@contextlib.contextmanager
def variant(model: Any, name: str) -> Iterator[None]:
    if name == "base":
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(name)
        yield


def score_answers(recipe: Recipe, rows: list[InstructionRow], answers: list[str]) -> dict[str, Any]:
    check = format_check(recipe)
    categories: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row, answer in zip(rows, answers, strict=True):
        if check is not None:
            categories[row.category]["format"].append(float(check(answer)))
        if row.category in recipe.eval.rouge_categories:
            categories[row.category]["rouge_l"].append(rouge_l(answer, row.response))
    per_category = {
        cat: {"n": sum(1 for r in rows if r.category == cat)}
        | {name: round(sum(v) / len(v), 4) for name, v in values.items()}
        for cat, values in sorted(categories.items())
    }
    out: dict[str, Any] = {"per_category": per_category}
    if check is not None:
        out["format_compliance"] = round(sum(check(a) for a in answers) / len(answers), 4)
    rouge = [x for values in categories.values() for x in values.get("rouge_l", [])]
    if rouge:
        out["rouge_l"] = round(sum(rouge) / len(rouge), 4)
    return out


def judges_for(recipe: Recipe, tokenizer: Any) -> dict[str, Judge]:
    """The recipe's judge first (its win rate is the gate's), then the reward model and the format check."""
    main = make_judge(recipe, tokenizer)
    judges: dict[str, Judge] = {main.name: main}
    if isinstance(main, FormatFirst):
        judges[main.judge.name] = main.judge
    if "reward" not in judges and (recipe.run_dir("reward") / "metrics.json").is_file():
        judges["reward"] = make_judge(recipe, tokenizer, kind="reward")
    if "rule" not in judges and format_check(recipe) is not None:
        judges["rule"] = make_judge(recipe, tokenizer, kind="rule")
    return judges


def run_eval(recipe: Recipe, *, force: bool = False) -> dict[str, Any]:
    from peft import PeftModel

    adapters = trained_adapters(recipe)
    inputs = {name: sha256_of(path / WEIGHTS) for name, path in adapters.items()}
    if (recipe.run_dir("reward") / "metrics.json").is_file():  # the reward-model judge
        inputs |= input_digests(recipe, "reward")
    run = Run(recipe, "eval", inputs)
    if (cached := run.cached(force)) is not None:
        return cached
    run.start(force)
    setup_torch(recipe)
    rows = instruction_splits(recipe)[1][: recipe.eval.limit]
    prompts = [prompt_text(row) for row in rows]
    tokenizer = load_tokenizer(recipe.base_model)
    model = load_causal_lm(recipe.base_model, tokenizer)
    for index, (name, path) in enumerate(adapters.items()):
        if index == 0:
            model = PeftModel.from_pretrained(model, path, adapter_name=name)
        else:
            model.load_adapter(path, adapter_name=name)
    results: dict[str, dict[str, Any]] = {}
    answers: dict[str, list[str]] = {}
    for name in ("base", *adapters):
        with variant(model, name):
            loss = response_loss(model, tokenizer, prompts, [row.response for row in rows])
            answers[name] = generate(
                model, tokenizer, prompts, max_new_tokens=recipe.eval.max_new_tokens,
                batch_size=recipe.eval.batch_size, desc=f"answers ({name})",
            )  # fmt: skip
        results[name] = {"response_loss": loss["loss"], "perplexity": loss["perplexity"]}
        results[name] |= score_answers(recipe, rows, answers[name])
        if name != "base":
            results[name]["loss_reduction"] = round(1 - loss["loss"] / results["base"]["response_loss"], 4)
        log.info("eval: %s %s", name, {k: v for k, v in results[name].items() if k != "per_category"})
    pairs = [("sft", "base"), *((step, "sft") for step in adapters if step != "sft")]
    wins: dict[str, dict[str, Any]] = {}
    judges = judges_for(recipe, tokenizer)
    for kind, judge in judges.items():
        for a, b in pairs:
            verdicts = judge.compare(prompts, answers[a], answers[b])
            wins.setdefault(f"{a}_vs_{b}", {})[kind] = win_rate([v.preference for v in verdicts])
    with (run.dir / "answers.jsonl").open("w") as handle:
        for i, row in enumerate(rows):
            record = {"prompt": prompts[i], "category": row.category, "reference": row.response}
            handle.write(json.dumps(record | {name: answers[name][i] for name in answers}) + "\n")
    report = {
        "department": recipe.department,
        "held_out_rows": len(rows),
        "judge": next(iter(judges)),  # the recipe's: the L3 gate's win rate is this judge's
        "variants": results,
        "win_rates": wins,
        "adapters": {name: str(path) for name, path in adapters.items()},
    }
    write_report(run.dir, report)
    return run.finish(report)
