"""`loragate train rl`: an L3 adapter by RLHF, RLOO or GRPO over the L2 adapter.

    loragate train rl --recipe adapters/recipes/it-helpdesk.yaml [--set rl.algorithm=grpo]

TRL's RLOOTrainer / GRPOTrainer sample `rl.num_generations` answers per training prompt from the
policy (the L2 adapter, trained further), score each with the reward: the department's reward
model (`loragate train reward` first) when `judge.kind` is `reward`, the format check when it is
`rule`. A KL term ties the policy to a frozen copy of the L2 adapter (TRL's "ref" adapter).

The KL weight defaults to DEFAULT_KL = 0.05 (TRL's RLOO default) when the recipe leaves
`rl.beta` unset: a reward model trained on a few hundred pairs is easy to hack (long answers,
repeated steps), and the KL term prices every token the policy moves away from L2. An explicit
`rl.beta=0` still turns it off. `reward_kl.png` in the run folder plots the mean reward and the
KL against L2 over the steps: reward that climbs while KL runs away is the sign of hacking.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .judges import RewardJudge, RuleJudge, judge_inputs, make_judge
from .modeling import load_tokenizer, load_trainable_adapter, setup_torch, train_and_save, training_args
from .recipe import Recipe, RlSpec
from .rlaif import sample_prompts
from .runs import Run, StepError, finished_adapter, input_digests

log = logging.getLogger("adapters")
DEFAULT_KL = 0.05


def kl_weight(spec: RlSpec) -> float:
    """`rl.beta` when the recipe sets it (0 included), else DEFAULT_KL."""
    return spec.beta if "beta" in spec.model_fields_set else DEFAULT_KL


def plot_reward_kl(history: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Mean reward and KL against L2 per logged step, one PNG; False when nothing was logged."""
    steps = [e for e in history if "reward" in e]
    if not steps:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [e.get("step", i + 1) for i, e in enumerate(steps)]
    fig, left = plt.subplots(figsize=(6, 3.6))
    left.plot(x, [e["reward"] for e in steps], marker="o", color="tab:green", label="mean reward")
    left.set_xlabel("optimizer step")
    left.set_ylabel("mean reward", color="tab:green")
    right = left.twinx()
    right.plot(x, [e.get("kl", 0.0) for e in steps], marker="s", color="tab:red", label="KL to L2")
    right.set_ylabel("KL to L2 (per token)", color="tab:red")
    left.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


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
    beta = kl_weight(recipe.rl)
    run = Run(recipe, "rl", input_digests(recipe, "sft", *judge_inputs(recipe)) | {"kl_weight": beta})
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
        "beta": beta,
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
    history = trainer.state.log_history
    rewards = [e["reward"] for e in history if "reward" in e]
    kls = [e["kl"] for e in history if "kl" in e]
    title = f"{recipe.department}: RL ({spec.algorithm}, KL weight {beta})"
    figures.update(
        {
            "algorithm": spec.algorithm,
            "reward": judge.name,
            "kl_weight": beta,
            "first_reward": rewards[0] if rewards else None,
            "last_reward": rewards[-1] if rewards else None,
            "last_kl": kls[-1] if kls else None,
            "plot": str(run.dir / "reward_kl.png")
            if plot_reward_kl(history, run.dir / "reward_kl.png", title)
            else None,
        }
    )
    log.info("rl: adapter in %s", run.adapter)
    return run.finish(figures)
