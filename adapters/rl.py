"""`loragate train rl`: an L3 adapter by RLHF, RLOO or GRPO over the L2 adapter.

    loragate train rl --recipe adapters/recipes/it-helpdesk.yaml [--set rl.algorithm=grpo]

TRL's RLOOTrainer / GRPOTrainer sample `rl.num_generations` answers per training prompt from the
policy (the L2 adapter, trained further), score each with the reward: the department's reward
model (`loragate train reward` first) when `judge.kind` is `reward`, the format check when it is
`rule`. With `rl.beta > 0` a KL term ties the policy to a frozen copy of the L2 adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .judges import RewardJudge, RuleJudge, judge_inputs, make_judge
from .modeling import load_tokenizer, load_trainable_adapter, setup_torch, train_and_save, training_args
from .recipe import Recipe
from .rlaif import sample_prompts
from .runs import Run, StepError, finished_adapter, input_digests

log = logging.getLogger("adapters")


def _text(item: Any) -> str:
    """A prompt or completion as TRL passes it (a string, or a list of chat messages)."""
    if isinstance(item, str):
        return item
    return str(item[-1]["content"])


class RewardFunction:
    """TRL's `reward_funcs` callable: one score per completion, from a scoring judge."""

    def __init__(self, judge: RewardJudge | RuleJudge):
        self.judge = judge
        self.__name__ = f"{judge.name}_reward"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        return self.judge.scores([_text(p) for p in prompts], [_text(c) for c in completions])


def run_rl(recipe: Recipe, *, force: bool = False) -> dict[str, Any]:
    from datasets import Dataset

    if recipe.judge.kind not in ("reward", "rule"):
        raise StepError(
            f"rl needs a judge that scores single answers (reward or rule), not {recipe.judge.kind!r}"
        )
    run = Run(recipe, "rl", input_digests(recipe, "sft", *judge_inputs(recipe)))
    if (cached := run.cached(force)) is not None:
        return cached
    run.start(force)
    setup_torch(recipe)
    spec = recipe.rl
    tokenizer = load_tokenizer(recipe.base_model)
    judge = make_judge(recipe, tokenizer, kind=recipe.judge.kind)  # a score per answer, not pairwise
    assert isinstance(judge, RewardJudge | RuleJudge)
    model = load_trainable_adapter(recipe.base_model, finished_adapter(recipe, "sft"), tokenizer)
    prompts = [{"prompt": [{"role": "user", "content": p}]} for p in sample_prompts(recipe)[: spec.prompts]]
    common = {
        **training_args(spec, run, recipe.seed),
        "num_generations": spec.num_generations,
        "max_completion_length": spec.max_completion_length,
        "temperature": spec.temperature,
        "beta": spec.beta,
        "logging_steps": 1,
    }
    if spec.algorithm == "rloo":
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOConfig as Config  # type: ignore[assignment]
        from trl import GRPOTrainer as Trainer  # type: ignore[assignment]
    trainer = Trainer(
        model=model,
        reward_funcs=[RewardFunction(judge)],
        args=Config(**common),
        train_dataset=Dataset.from_list(prompts),
        processing_class=tokenizer,
    )
    figures = train_and_save(trainer, run)
    rewards = [e["reward"] for e in trainer.state.log_history if "reward" in e]
    figures.update(
        {
            "algorithm": spec.algorithm,
            "reward": judge.name,
            "first_reward": rewards[0] if rewards else None,
            "last_reward": rewards[-1] if rewards else None,
        }
    )
    log.info("rl: adapter in %s", run.adapter)
    return run.finish(figures)
