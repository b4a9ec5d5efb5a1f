"""`loragate train eval`: base -> L1 -> L2 -> L1+L2 (as served) -> L3, on prompts training never saw.

    loragate train eval --recipe adapters/recipes/it-helpdesk.yaml

Variants (greedy answers, float32): `base`; `l1`, the base model with the department's L1
template rendered as the gateway renders it (`served`); `sft`, the L2 adapter; `l1+sft`, the
template with the L2 adapter, which is what a department with both serves; and every finished L3
run (`dpo`, `rlaif`, `rl`). On each evaluation set (`eval_sets`: the unseen held-out split and
the independent hand-written requests) each variant gets its format compliance and its field
accuracy (`fields`), per field and all fields together, each with a 95% Wilson interval. Base,
L2 and L3 also answer the forgetting suite (gate: at most 5 points below the base) and the
off-domain probe. Then win rates, L2 over the base and each L3 over L2, by every judge
(`independent_judges`), with their agreement. Writes report.json, report.md, report.png,
answers.jsonl and verdicts.jsonl to runs/<department>/eval/.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.registry import WEIGHTS, sha256_of

from .eval_sets import EvalRow, forgetting_probes, held_out_rows, independent_rows, off_domain_prompts
from .fields import constant_answer, field_names, score_fields
from .forgetting import gate, off_domain_summary, suite_score
from .generation import response_loss
from .independent_judges import DEFAULT_JUDGES, JudgeChoice, agreement, build_judge
from .judges import Verdict, format_check
from .modeling import load_causal_lm, load_tokenizer, setup_torch
from .recipe import Recipe
from .report import write_report
from .runs import Run, finished_adapter, input_digests
from .served import ServedPrompts, generate_texts, recipe_template
from .splits import instruction_splits
from .stats import rate

log = logging.getLogger("adapters")
L3_STEPS = ("dpo", "rlaif", "rl")
FORGETTING_TOKENS = 48  # the suite's answers are a word or a sentence


def trained_adapters(recipe: Recipe) -> dict[str, Path]:
    """sft (required) and the L3 runs finished from this very sft adapter (`rl` only when the recipe
    publishes it: `make adapters` runs it after the chain, for its reward-vs-KL plot)."""
    found = {"sft": finished_adapter(recipe, "sft")}
    sft = sha256_of(found["sft"] / WEIGHTS)
    for step in L3_STEPS:
        if step == "rl" and recipe.publish.l3 != "rl":  # a short run for its reward-vs-KL plot
            continue
        folder = recipe.run_dir(step)
        if not ((folder / "metrics.json").is_file() and (folder / "adapter").is_dir()):
            continue
        if Run(recipe, step).trained_on() != sft:  # trained from an older L2: not this chain's L3
            log.warning("eval: leaving out %s, trained from another L2 adapter", folder)
            continue
        found[step] = folder / "adapter"
    return found


def variants(adapters: dict[str, Path], has_template: bool) -> dict[str, tuple[str | None, bool]]:
    """name -> (adapter or None for the base, whether the L1 template applies), in the table's order."""
    out: dict[str, tuple[str | None, bool]] = {"base": (None, False)}
    if has_template:
        out["l1"] = (None, True)
    out["sft"] = ("sft", False)
    if has_template:
        out["l1+sft"] = ("sft", True)
    out |= {step: (step, False) for step in adapters if step != "sft"}
    return out


def score_set(check_name: str | None, rows: list[EvalRow], answers: list[str], check: Any) -> dict[str, Any]:
    """Format compliance and field accuracy of one variant on one set, each with its interval."""
    out: dict[str, Any] = {"n": len(rows)}
    if check is not None:
        out["format"] = rate(sum(bool(check(a)) for a in answers), len(answers))
    scored = [score_fields(check_name, a, r.expected) for r, a in zip(rows, answers, strict=True)]
    for name in (*field_names(check_name), "all"):
        values = [s[name] for s in scored if name in s]
        if values:
            out.setdefault("fields", {})[name] = rate(sum(values), len(values))
    return out


class Answerer:
    """One model with every adapter loaded; answers prompts as a variant, rendered as served."""

    def __init__(self, recipe: Recipe, adapters: dict[str, Path]):
        from peft import PeftModel

        self.recipe = recipe
        self.tokenizer = load_tokenizer(recipe.base_model)
        self.base = load_causal_lm(recipe.base_model, self.tokenizer)
        model: Any = self.base
        for index, (name, path) in enumerate(adapters.items()):
            if index == 0:
                model = PeftModel.from_pretrained(model, path, adapter_name=name)
            else:
                model.load_adapter(path, adapter_name=name)
        self.model = model
        self.template = recipe_template(recipe)
        self.served = ServedPrompts(self.tokenizer, self.template, recipe.department)

    @contextlib.contextmanager
    def using(self, adapter: str | None) -> Iterator[None]:
        """The shared model as the base (adapters off) or with one adapter active."""
        if adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(adapter)
            yield

    def answer(
        self, variant: tuple[str | None, bool], prompts: list[str], max_new_tokens: int, desc: str
    ) -> list[str]:
        adapter, l1 = variant
        texts = [self.served.text(p, l1) for p in prompts]
        with self.using(adapter):
            return generate_texts(
                self.model, self.tokenizer, texts,
                max_new_tokens=max_new_tokens, batch_size=self.recipe.eval.batch_size, desc=desc,
            )  # fmt: skip

    def loss(self, adapter: str | None, rows: list[EvalRow]) -> dict[str, float]:
        with self.using(adapter):
            return response_loss(
                self.model, self.tokenizer, [r.prompt for r in rows], [r.reference or "" for r in rows]
            )


def run_eval(
    recipe: Recipe, *, force: bool = False, judges: list[JudgeChoice] | None = None
) -> dict[str, Any]:
    adapters = trained_adapters(recipe)
    inputs: dict[str, Any] = {name: sha256_of(path / WEIGHTS) for name, path in adapters.items()}
    if (recipe.run_dir("reward") / "metrics.json").is_file():  # the reward-model judge
        inputs |= input_digests(recipe, "reward")
    template = recipe_template(recipe)
    if template is not None:
        inputs["l1_template"] = sha256_of(template)
    if judges:
        inputs["judges"] = [JudgeChoice.model_validate(j).model_dump(exclude_none=True) for j in judges]
    run = Run(recipe, "eval", inputs)
    if (cached := run.cached(force)) is not None:
        return cached
    run.start(force)
    setup_torch(recipe)
    check, check_name = format_check(recipe), recipe.data.format_check
    sets = {"held_out": held_out_rows(recipe), "independent": independent_rows(recipe)}
    sets = {name: rows for name, rows in sets.items() if rows}
    answerer = Answerer(recipe, adapters)
    table = variants(adapters, answerer.template is not None)
    max_new = recipe.eval.max_new_tokens
    answers: dict[str, dict[str, list[str]]] = {s: {} for s in sets}
    results: dict[str, dict[str, Any]] = {}
    for name, variant in table.items():
        results[name] = {"adapter": variant[0], "l1_template": variant[1], "sets": {}}
        for set_name, rows in sets.items():
            got = answerer.answer(variant, [r.prompt for r in rows], max_new, f"{set_name} ({name})")
            answers[set_name][name] = got
            results[name]["sets"][set_name] = score_set(check_name, rows, got, check)
        if not variant[1] and "held_out" in sets:  # teacher-forced loss: no template, as trained
            loss = answerer.loss(variant[0], sets["held_out"])
            results[name] |= {"response_loss": loss["loss"], "perplexity": loss["perplexity"]}
            if name != "base":
                results[name]["loss_reduction"] = round(
                    1 - loss["loss"] / results["base"]["response_loss"], 4
                )
        first = results[name]["sets"].get("held_out") or next(iter(results[name]["sets"].values()), {})
        if "format" in first:  # the publish gate's figure: format on the unseen held-out set
            results[name]["format_compliance"] = first["format"]["rate"]
        log.info("eval: %s %s", name, json.dumps(results[name]["sets"]))
    train_expected = [row.expected for row in instruction_splits(recipe)[0]]
    constant = {
        name: constant_answer(check_name, train_expected, [r.expected for r in rows])
        for name, rows in sets.items()
    }
    general = general_suites(recipe, answerer, [n for n, v in table.items() if not v[1]], check)
    wins, verdict_log, agreements, gate_judge = judge_all(recipe, answerer, sets, answers, adapters, judges)
    write_answers(run.dir, sets, answers, verdict_log)
    report = {
        "department": recipe.department,
        "held_out_rows": len(sets.get("held_out", [])),
        "sets": {name: len(rows) for name, rows in sets.items()},
        "template": str(answerer.template) if answerer.template else None,
        "judge": gate_judge,  # the L3 gate reads this judge's win rate (its lower bound)
        "variants": results,
        "constant_answer": constant,  # fields only: always the value most common in training
        "win_rates": wins,
        "judge_agreement": agreements,
        "adapters": {name: str(path) for name, path in adapters.items()},
        "rl_plot": str(plot) if (plot := recipe.run_dir("rl") / "reward_kl.png").is_file() else None,
    } | general
    write_report(run.dir, report)
    return run.finish(report)


def general_suites(recipe: Recipe, answerer: Answerer, names: list[str], check: Any) -> dict[str, Any]:
    """Forgetting suite and off-domain probe for the variants without a template (base, L2, L3)."""
    probes = forgetting_probes(recipe, recipe.eval.limit)
    off = off_domain_prompts(recipe, recipe.eval.limit)
    out: dict[str, Any] = {"forgetting": {}, "off_domain": {}}
    table = variants({n: Path() for n in names if n != "base"}, False)
    for name in names:
        if probes:
            prompts = [p.instruction for p in probes]
            got = answerer.answer(table[name], prompts, FORGETTING_TOKENS, f"forgetting ({name})")
            out["forgetting"][name] = suite_score(probes, got)
            if name != "base":
                out["forgetting"][name]["gate"] = gate(out["forgetting"]["base"], out["forgetting"][name])
            out["forgetting"][name]["answers"] = got
        if off:
            got = answerer.answer(table[name], off, recipe.eval.max_new_tokens, f"off-domain ({name})")
            out["off_domain"][name] = off_domain_summary(got, check, off)
    return out


def judge_all(
    recipe: Recipe,
    answerer: Answerer,
    sets: dict[str, list[EvalRow]],
    answers: dict[str, dict[str, list[str]]],
    adapters: dict[str, Path],
    choices: list[JudgeChoice] | None,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any], str]:
    """Win rates (ties half, Wilson interval) of sft over base and each L3 over sft, by every judge."""
    prompts = [r.prompt for rows in sets.values() for r in rows]
    expected = [r.expected for rows in sets.values() for r in rows]
    # `eval.judges` in the recipe (a list of JudgeChoice mappings), if the recipe has that field
    pick = choices or getattr(recipe.eval, "judges", None) or list(DEFAULT_JUDGES)
    judges = {}
    for choice in pick:
        choice = JudgeChoice.model_validate(choice)
        judge = build_judge(choice, recipe, answerer.tokenizer, answerer.base, expected)
        if judge is not None:
            judges[judge.name] = judge
    pairs = [("sft", "base"), *((step, "sft") for step in adapters if step != "sft")]
    wins: dict[str, Any] = {}
    agreements: dict[str, Any] = {}
    log_rows: list[dict[str, Any]] = []
    for a, b in pairs:
        xs = [x for s in sets for x in answers[s][a]]
        ys = [y for s in sets for y in answers[s][b]]
        by_judge: dict[str, list[Verdict]] = {}
        with answerer.using(None):  # a causal-LM judge on the shared model: the base
            for name, judge in judges.items():
                by_judge[name] = judge.compare(prompts, xs, ys)
        comparison = f"{a}_vs_{b}"
        for name, verdicts in by_judge.items():
            prefs = [v.preference for v in verdicts]
            w, t = sum(p > 0.5 for p in prefs), sum(p == 0.5 for p in prefs)
            wins.setdefault(comparison, {})[name] = rate(w + 0.5 * t, len(prefs)) | {
                "win_rate": round((w + 0.5 * t) / len(prefs), 4) if prefs else 0.0,
                "wins": w, "ties": t, "losses": len(prefs) - w - t,
            }  # fmt: skip
            log_rows += [
                {"comparison": comparison, "judge": name, "i": i} | v.to_json()
                for i, v in enumerate(verdicts)
            ]
        agreements[comparison] = agreement(by_judge)
    return wins, log_rows, agreements, gate_judge_name(recipe, judges)


def gate_judge_name(recipe: Recipe, judges: dict[str, Any]) -> str:
    """The reward model when it trained on pairs DPO never saw, else the LLM judge, else the first."""
    metrics = recipe.run_dir("reward") / "metrics.json"
    independent = metrics.is_file() and json.loads(metrics.read_text()).get("independent_of_dpo")
    if "reward" in judges and independent:
        return "reward"
    return next((n for n in judges if n.startswith("llm") or n.startswith("openai")), next(iter(judges), ""))


def write_answers(
    folder: Path, sets: dict[str, list[EvalRow]], answers: dict[str, Any], verdicts: list
) -> None:
    with (folder / "answers.jsonl").open("w") as handle:
        for set_name, rows in sets.items():
            for i, row in enumerate(rows):
                record = {
                    "set": set_name,
                    "prompt": row.prompt,
                    "expected": row.expected,
                    "reference": row.reference,
                }
                handle.write(json.dumps(record | {n: a[i] for n, a in answers[set_name].items()}) + "\n")
    (folder / "verdicts.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verdicts))
