"""`loragate train dpo`: an L3 adapter by preference optimisation over the L2 adapter.

    loragate train dpo --recipe adapters/recipes/it-helpdesk.yaml [--set dpo.method=kto]

Training continues the L2 adapter itself (same rank and layers, so the result is one servable
LoRA adapter on the base model). The reference policy is the L2 adapter: TRL keeps a frozen copy
of it as a second adapter ("ref") and saves only the trained one. `method` picks the loss:
DPO (pairs), KTO (each pair split into a desirable and an undesirable answer) or ORPO
(no reference; TRL's experimental trainer).
"""

from __future__ import annotations

import logging
from typing import Any

from .data import PreferencePair
from .modeling import load_tokenizer, load_trainable_adapter, setup_torch, train_and_save, training_args
from .recipe import PreferenceSpec, Recipe
from .reward import conversational_pairs
from .runs import Run, finished_adapter, input_digests
from .splits import preference_splits

log = logging.getLogger("adapters")


def unpaired(pairs: list[PreferencePair]) -> list[dict[str, Any]]:
    """KTO's rows: every chosen answer is desirable, every rejected one undesirable."""
    rows = []
    for p in pairs:
        prompt = [{"role": "user", "content": p.prompt}]
        rows.append(
            {"prompt": prompt, "completion": [{"role": "assistant", "content": p.chosen}], "label": True}
        )
        rows.append(
            {"prompt": prompt, "completion": [{"role": "assistant", "content": p.rejected}], "label": False}
        )
    return rows


def preference_trainer(recipe: Recipe, run: Run, spec: PreferenceSpec, pairs: list[PreferencePair]) -> Any:
    """A TRL trainer for `spec.method` that continues the recipe's finished L2 adapter."""
    from datasets import Dataset

    tokenizer = load_tokenizer(recipe.base_model)
    model = load_trainable_adapter(recipe.base_model, finished_adapter(recipe, "sft"), tokenizer)
    common = {**training_args(spec, run, recipe.seed), "beta": spec.beta, "max_length": spec.max_length}
    if spec.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        if spec.sft_weight:
            common |= {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, spec.sft_weight]}
        trainer_cls, config, rows = DPOTrainer, DPOConfig(**common), conversational_pairs(pairs)
    elif spec.method == "kto":
        from trl import KTOConfig, KTOTrainer

        trainer_cls, config, rows = KTOTrainer, KTOConfig(**common), unpaired(pairs)
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        trainer_cls, config, rows = ORPOTrainer, ORPOConfig(**common), conversational_pairs(pairs)
    return trainer_cls(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )


def train_preferences(recipe: Recipe, run: Run, spec: PreferenceSpec, pairs: list[PreferencePair]) -> dict:
    setup_torch(recipe)
    trainer = preference_trainer(recipe, run, spec, pairs)
    figures = train_and_save(trainer, run)
    figures.update({"method": spec.method, "train_pairs": len(pairs)})
    rewards = [e for e in trainer.state.log_history if "rewards/accuracies" in e]
    if rewards:
        figures["last_reward_accuracy"] = rewards[-1]["rewards/accuracies"]
        figures["last_reward_margin"] = rewards[-1].get("rewards/margins")
    return figures


def run_dpo(recipe: Recipe, *, force: bool = False) -> dict[str, Any]:
    run = Run(recipe, "dpo", input_digests(recipe, "sft"))
    if (cached := run.cached(force)) is not None:
        return cached
    run.start(force)
    pairs, _ = preference_splits(recipe)
    figures = train_preferences(recipe, run, recipe.dpo, pairs)
    log.info("dpo: adapter in %s", run.adapter)
    return run.finish(figures)
