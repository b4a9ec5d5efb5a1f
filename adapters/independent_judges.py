"""The evaluation's judges, configurable, and how far they agree.

A judge that learnt from DPO's own pairs grades its own training rule; the evaluation therefore
asks several judges and reports each, with their agreement (Cohen's kappa). One `JudgeChoice`
per judge:

    {kind: rule}                                    the department's format check (format first)
    {kind: fields}                                  the answers' fields against the request's true
                                                    values (`expected`): more right fields win.
                                                    Nothing is trained: it knows the answer
    {kind: reward}                                  the reward model (trained on pairs that neither
                                                    DPO nor the evaluation sees)
    {kind: llm}                                     the base model with the rubric, A or B by the
    {kind: llm, model: path/to/causal-lm-folder}    odds of the next token; or any local folder
    {kind: openai, base_url: http://host/v1,        an OpenAI-compatible endpoint (e.g. a larger
     model: NAME, api_key_env: OPENAI_API_KEY}      model behind this gateway), by its reply

Every pairwise judge is asked in both orders; a win counts only when both orders agree.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .fields import FIELD_SCORERS, score_fields
from .judges import FormatFirst, Judge, LlmJudge, RuleJudge, Verdict, both_orders, by_score, format_check
from .recipe import Recipe
from .runs import StepError, finished_adapter
from .stats import cohen_kappa


class JudgeChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["rule", "fields", "reward", "llm", "openai"] = Field(description="which judge (see above)")
    name: str | None = Field(None, description="its name in the report (default: the kind, or the model)")
    model: str | None = Field(
        None, description="llm: a local causal-LM folder (default: the base); openai: model"
    )
    base_url: str | None = Field(None, description="openai: the endpoint, ending in /v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: the environment variable with the key")
    format_first: bool = Field(False, description="the format check decides where it tells answers apart")


DEFAULT_JUDGES = (
    JudgeChoice(kind="rule"),
    JudgeChoice(kind="fields"),
    JudgeChoice(kind="reward"),
    JudgeChoice(kind="llm"),
)


class FieldsJudge:
    """Per request, the answer with more fields right (exactly, as the evaluation scores them) wins.

    It grades the decision, not the style, and learnt nothing from any preference pair: the judge
    the L3 claim needs when no larger model is at hand. Requests without true values are ties.
    """

    name = "fields"

    def __init__(self, check: str, expected: Sequence[Mapping[str, Any] | None]):
        self.check, self.expected = check, list(expected)

    def scores(self, answers: Sequence[str]) -> list[float]:
        out = []
        for answer, expected in zip(answers, self.expected, strict=True):
            scored = score_fields(self.check, answer, expected)
            out.append(float(sum(ok for name, ok in scored.items() if name != "all")))
        return out

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[Verdict]:
        return by_score(self.scores(a), self.scores(b))


class OpenAIJudge:
    """The pairwise question to an OpenAI-compatible chat endpoint, answered by a letter, in both orders."""

    def __init__(self, client: Any, model: str, rubric: str, name: str | None = None, workers: int = 4):
        self.client, self.model, self.rubric, self.workers = client, model, rubric, workers
        self.name = name or f"openai:{model}"
        self.asked = 0  # questions sent (both orders of every pair)

    def _letter(self, prompt: str, a: str, b: str) -> float:
        question = LlmJudge.QUESTION.format(rubric=self.rubric, prompt=prompt, a=a, b=b)
        reply = self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": question}],
            max_tokens=4,
            temperature=0,
        )
        self.asked += 1
        found = re.search(r"\b([AB])\b", reply.choices[0].message.content or "")
        return 0.5 if found is None else 1.0 if found.group(1) == "A" else 0.0

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[Verdict]:
        with ThreadPoolExecutor(self.workers) as pool:
            first = list(pool.map(self._letter, prompts, a, b))
            second = [1.0 - p for p in pool.map(self._letter, prompts, b, a)]
        return both_orders(first, second)


def build_judge(
    choice: JudgeChoice,
    recipe: Recipe,
    tokenizer: Any,
    base_model: Any = None,
    expected: Sequence[Mapping[str, Any] | None] = (),
) -> Judge | None:
    """The judge `choice` names, or None where it cannot run here (no reward model, no format check,
    no field parser or no true values). `expected`: the true fields of the requests, in order."""
    from .judges import RewardJudge

    check = format_check(recipe)
    judge: Judge
    if choice.kind == "rule":
        if check is None:
            return None
        return RuleJudge(check)
    if choice.kind == "fields":
        return _fields_judge(recipe, expected)
    if choice.kind == "reward":
        try:
            judge = RewardJudge.load(recipe.base_model, finished_adapter(recipe, "reward"), tokenizer)
        except StepError:
            return None
    elif choice.kind == "llm":
        from .modeling import load_causal_lm, load_tokenizer

        if choice.model is None:
            model = base_model if base_model is not None else load_causal_lm(recipe.base_model, tokenizer)
            judge = LlmJudge(model, tokenizer, recipe.judge.rubric)
        else:
            own = load_tokenizer(Path(choice.model))
            judge = LlmJudge(load_causal_lm(Path(choice.model), own), own, recipe.judge.rubric)
            judge.name = f"llm:{Path(choice.model).name}"
    else:
        judge = _openai_judge(choice, recipe)
    if choice.name:
        judge.name = choice.name
    if choice.format_first and check is not None:
        return FormatFirst(judge, check)
    return judge


def _openai_judge(choice: JudgeChoice, recipe: Recipe) -> OpenAIJudge:
    import openai

    if not choice.base_url or not choice.model:
        raise StepError("an openai judge needs base_url and model")
    key = os.environ.get(choice.api_key_env, "none")
    client = openai.OpenAI(base_url=choice.base_url, api_key=key, max_retries=2, timeout=120)
    return OpenAIJudge(client, choice.model, recipe.judge.rubric)


def _fields_judge(recipe: Recipe, expected: Sequence[Mapping[str, Any] | None]) -> FieldsJudge | None:
    name = recipe.data.format_check
    if name not in FIELD_SCORERS or not any(expected):
        return None
    return FieldsJudge(name, expected)


def agreement(verdicts: dict[str, list[Verdict]]) -> list[dict[str, Any]]:
    """Every pair of judges: percent agreement and Cohen's kappa over win / tie / loss labels."""
    names = list(verdicts)
    out = []
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            labels = [[_label(v) for v in verdicts[name]] for name in (x, y)]
            out.append({"judges": [x, y]} | cohen_kappa(labels[0], labels[1]))
    return out


def _label(verdict: Verdict) -> str:
    return "win" if verdict.preference > 0.5 else "loss" if verdict.preference < 0.5 else "tie"
