"""`loragate train reward`: the department's reward model, for RLHF and as a judge.

    loragate train reward --recipe adapters/recipes/legal.yaml

A LoRA adapter (with a fresh one-output score head) on the base model as a sequence
classifier, trained by TRL's RewardTrainer on the preference pairs (prompt, chosen, rejected)
with the Bradley-Terry loss. It is never served, so its score head (`modules_to_save`) is fine.
Its accuracy on the held-out pairs (reward(chosen) > reward(rejected)) goes to metrics.json.

It trains on `data.preferences_reward`: pairs that neither DPO nor the evaluation sees, so that
as a judge of L3 it does not grade DPO's own pairs. A recipe without that file falls back to
DPO's pairs, and metrics.json says so (`independent_of_dpo: false`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from trl import RewardConfig, RewardTrainer

from .data import PreferencePair
from .judges import RewardJudge
from .modeling import load_tokenizer, lora_config, setup_torch, train_and_save, training_args
from .recipe import Recipe
from .runs import Run
from .splits import reward_splits

log = logging.getLogger("adapters")


def conversational_pairs(pairs: list[PreferencePair]) -> list[dict[str, Any]]:
    return [
        {
            "prompt": [{"role": "user", "content": p.prompt}],
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]


def held_out_accuracy(judge: RewardJudge, pairs: list[PreferencePair]) -> dict[str, float]:
    prompts = [p.prompt for p in pairs]
    chosen = judge.scores(prompts, [p.chosen for p in pairs])
    rejected = judge.scores(prompts, [p.rejected for p in pairs])
    right = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    margin = sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)
    return {"held_out_accuracy": round(right / len(pairs), 4), "held_out_margin": round(margin, 4)}


def run_reward(recipe: Recipe, *, force: bool = False) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    run = Run(recipe, "reward")
    if (cached := run.cached(force)) is not None:
        return cached
    run.start(force)
    setup_torch(recipe)
    train, held_out = reward_splits(recipe)
    tokenizer = load_tokenizer(recipe.base_model)
    model = AutoModelForSequenceClassification.from_pretrained(
        recipe.base_model, num_labels=1, dtype=torch.float32
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    spec = recipe.reward
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(**training_args(spec, run, recipe.seed), max_length=spec.max_length),
        train_dataset=Dataset.from_list(conversational_pairs(train)),
        processing_class=tokenizer,
        peft_config=lora_config(recipe.lora, task_type="SEQ_CLS"),
    )
    figures = train_and_save(trainer, run, servable=False)
    figures.update(held_out_accuracy(RewardJudge(trainer.model, tokenizer), held_out))
    figures["train_pairs"] = len(train)
    figures["independent_of_dpo"] = recipe.data.preferences_reward is not None
    figures["pairs_file"] = str(recipe.data.preferences_reward or recipe.data.preferences)
    log.info("reward: held-out accuracy %.3f", figures["held_out_accuracy"])
    return run.finish(figures)
