"""Judges: which of two answers to the same prompt is better.

    reward   the department's reward model (`loragate train reward`) scores each answer
    llm      a causal LM (the base model, or any local folder), prompted with the recipe's rubric,
             picks A or B by the odds of the next token; asked in both orders, and a win only
             when both orders agree (a tie otherwise), so a position bias cannot make a winner
    openai   the same question to an OpenAI-compatible endpoint (`independent_judges`)
    rule     the department's format check: an answer that passes beats one that fails

With `judge.format_first` (the default) and a format check, the department's format comes first:
an answer in format beats one that is not, whatever the reward model or LLM says (a reward model
trained on a few hundred pairs sometimes prefers a fluent answer that breaks the format).

`compare` returns one `Verdict` per prompt: `preference` is 1.0 when answer A wins, 0.0 when B
wins and 0.5 for a tie. RLAIF trains on the verdicts; eval turns them into win rates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from .data import FORMAT_CHECKS
from .generation import render_prompt
from .recipe import Recipe
from .runs import StepError, finished_adapter


@dataclass
class Verdict:
    preference: float
    detail: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Judge(Protocol):
    name: str

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[Verdict]: ...


def by_score(scores_a: Sequence[float], scores_b: Sequence[float]) -> list[Verdict]:
    return [
        Verdict(1.0 if x > y else 0.0 if x < y else 0.5, {"score_a": round(x, 4), "score_b": round(y, 4)})
        for x, y in zip(scores_a, scores_b, strict=True)
    ]


class RuleJudge:
    name = "rule"

    def __init__(self, check: Callable[[str], bool]):
        self.check = check

    def scores(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        return [float(self.check(answer)) for answer in answers]

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[Verdict]:
        return by_score(self.scores(prompts, a), self.scores(prompts, b))


class RewardJudge:
    name = "reward"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size

    @classmethod
    def load(cls, base: Any, adapter: Any, tokenizer: Any) -> RewardJudge:
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification

        from .modeling import device

        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
        model = model.to(device())  # the GPU when there is one, as every other model of the factory
        model.config.pad_token_id = tokenizer.pad_token_id
        return cls(PeftModel.from_pretrained(model, adapter), tokenizer)

    @torch.no_grad()
    def scores(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        self.tokenizer.padding_side = "right"
        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": a}], tokenize=False
                )
                for p, a in zip(
                    prompts[start : start + self.batch_size],
                    answers[start : start + self.batch_size],
                    strict=True,
                )
            ]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            out += self.model(**batch.to(self.model.device)).logits[:, 0].float().tolist()
        return out

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[Verdict]:
        return by_score(self.scores(prompts, a), self.scores(prompts, b))


class LlmJudge:
    name = "llm"
    QUESTION = (
        "{rubric}\n\nRequest:\n{prompt}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
        "Which answer is better? Reply with the single letter A or B."
    )

    def __init__(self, model: Any, tokenizer: Any, rubric: str, batch_size: int = 8):
        self.model, self.tokenizer, self.rubric, self.batch_size = model.eval(), tokenizer, rubric, batch_size
        self.letters = [tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in ("A", "B")]

    @torch.no_grad()
    def _p_first(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        """P(the answer shown as A is better), from the next-token odds of "A" against "B"."""
        self.tokenizer.padding_side = "left"
        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            end = start + self.batch_size
            texts = [
                render_prompt(self.tokenizer, self.QUESTION.format(rubric=self.rubric, prompt=p, a=x, b=y))
                for p, x, y in zip(prompts[start:end], a[start:end], b[start:end], strict=True)
            ]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            logits = self.model(**batch.to(self.model.device)).logits[:, -1, self.letters].float()
            out += logits.softmax(-1)[:, 0].tolist()
        return out

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[Verdict]:
        first = self._p_first(prompts, a, b)
        swapped = self._p_first(prompts, b, a)
        return both_orders(first, [1.0 - p for p in swapped])


def both_orders(first: Sequence[float], second: Sequence[float]) -> list[Verdict]:
    """Verdicts from P(A is better) asked with A shown first and with A shown second.

    A wins only when both orders say so, B only when both say B; a judge that flips with the
    order (a position bias) gives a tie. `p_a` is the mean of the two.
    """
    verdicts = []
    for p1, p2 in zip(first, second, strict=True):
        preference = 1.0 if p1 > 0.5 and p2 > 0.5 else 0.0 if p1 < 0.5 and p2 < 0.5 else 0.5
        detail = {"p_a": round((p1 + p2) / 2, 4), "p_a_first": round(p1, 4), "p_a_second": round(p2, 4)}
        verdicts.append(Verdict(preference, detail))
    return verdicts


class FormatFirst:
    """The department's format check decides where it tells two answers apart; `judge` elsewhere."""

    def __init__(self, judge: Judge, check: Callable[[str], bool]):
        self.judge, self.check = judge, check
        self.name = f"{judge.name}+format"

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[Verdict]:
        verdicts = []
        for verdict, x, y in zip(self.judge.compare(prompts, a, b), a, b, strict=True):
            fa, fb = float(self.check(x)), float(self.check(y))
            preference = verdict.preference if fa == fb else fa
            verdicts.append(Verdict(preference, verdict.detail | {"format_a": fa, "format_b": fb}))
        return verdicts


def format_check(recipe: Recipe) -> Callable[[str], bool] | None:
    """The recipe's format check: a named one from FORMAT_CHECKS, or its own regular expression."""
    name, regex = recipe.data.format_check, recipe.data.format_regex
    if regex is not None:
        pattern = re.compile(regex)
        return lambda text: pattern.fullmatch(text.strip()) is not None
    if name is None:
        return None
    if name not in FORMAT_CHECKS:
        raise StepError(f"unknown format check {name!r} (known: {sorted(FORMAT_CHECKS)})")
    return FORMAT_CHECKS[name]


def judge_inputs(recipe: Recipe) -> tuple[str, ...]:
    """The earlier steps the recipe's judge needs (the reward model's, for `reward`)."""
    return ("reward",) if recipe.judge.kind == "reward" else ()


def make_judge(recipe: Recipe, tokenizer: Any, base_model: Any = None, kind: str | None = None) -> Judge:
    """The judge the recipe names (or `kind`, as it is), format first if the recipe says so."""
    judge = _model_judge(recipe, tokenizer, base_model, kind or recipe.judge.kind)
    check = format_check(recipe)
    if kind is None and recipe.judge.format_first and check is not None and judge.name != "rule":
        return FormatFirst(judge, check)
    return judge


def _model_judge(recipe: Recipe, tokenizer: Any, base_model: Any, kind: str) -> Judge:
    """`base_model` is reused by the LLM judge if given."""
    if kind == "rule":
        check = format_check(recipe)
        if check is None:
            raise StepError("the rule judge needs `data.format_check` or `data.format_regex` in the recipe")
        return RuleJudge(check)
    if kind == "reward":
        return RewardJudge.load(recipe.base_model, finished_adapter(recipe, "reward"), tokenizer)
    if base_model is None:
        from .modeling import load_causal_lm

        base_model = load_causal_lm(recipe.base_model, tokenizer)
    return LlmJudge(base_model, tokenizer, recipe.judge.rubric)
