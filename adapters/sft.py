"""`loragate train sft`: the L2 adapter, supervised fine-tuning with LoRA.

    loragate train sft --recipe adapters/recipes/it-helpdesk.yaml [--set sft.epochs=1] [--force]

Each dolly row becomes a prompt (the user turn) and a completion (the answer), rendered by TRL
through the base model's own chat template (its default system prompt included, as the gateway
sends it). With `sft.template_share`, that share of the department's rows (drawn by seed; replay
rows never) is trained behind the department's L1 template instead, rendered by the gateway's own
template code: an adapter that never saw its template answered worse with it than without.

The loss covers the answer tokens only, and the LM head runs only at those positions: on a 135M
model with a 49k vocabulary that head is a fifth of the work. Rows of similar length are batched
together, so there is little padding.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Collection
from typing import Any

import torch
import torch.nn.functional as F
from trl import SFTConfig, SFTTrainer

from .data import InstructionRow, to_messages
from .modeling import (
    load_causal_lm,
    load_tokenizer,
    lora_config,
    setup_torch,
    train_and_save,
    training_args,
)
from .recipe import Recipe
from .runs import Run, StepError
from .served import ServedPrompts, as_chat, recipe_template
from .splits import instruction_splits, sft_rows

log = logging.getLogger("adapters")


def prompt_completion(
    rows: list[InstructionRow],
    served: ServedPrompts | None = None,
    templated: Collection[InstructionRow] = (),
) -> list[dict[str, Any]]:
    """TRL's conversational prompt-completion rows: loss on the completion only. Rows in
    `templated` get the L1 template's system prompt and few-shot turns before the user turn."""
    out = []
    for row in rows:
        user, assistant = to_messages(row)
        prompt = [user]
        if served is not None and row in templated:
            prompt = as_chat(served.messages(user["content"], l1=True))
        out.append({"prompt": prompt, "completion": [assistant]})
    return out


def templated_rows(recipe: Recipe) -> set[InstructionRow]:
    """The department's rows (not replay) that train behind the template: `template_share`, by seed."""
    train, _ = instruction_splits(recipe)
    count = round(len(train) * recipe.sft.template_share)
    return set(random.Random(recipe.seed + 2).sample(train, count))


def template_inputs(recipe: Recipe) -> dict[str, str]:
    """The template's sha256 when SFT reads it (a template edit retrains), else nothing."""
    if recipe.sft.template_share == 0:
        return {}
    template = recipe_template(recipe)
    if template is None:
        raise StepError(
            f"sft.template_share is {recipe.sft.template_share} but {recipe.department} has no L1 "
            "template (set data.template)"
        )
    from service.registry import sha256_of

    return {"l1_template": sha256_of(template)}


def completion_loss(model: Any, inputs: dict[str, torch.Tensor], num_items: Any = None) -> torch.Tensor:
    """Mean cross-entropy over the labelled (answer) tokens, with the LM head only at those positions."""
    labels = inputs["labels"]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(
        input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False
    ).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != -100
    logits = base.lm_head(hidden[:, :-1][mask]).float()
    total = F.cross_entropy(logits, targets[mask], reduction="sum")
    count = num_items if num_items is not None else mask.sum()
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)


class CompletionOnlySFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with `completion_loss` (no full-vocabulary logits at prompt positions)."""

    template_rows = 0  # rows trained behind the L1 template (set by build_trainer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        loss = completion_loss(model, inputs, num_items_in_batch)
        return (loss, None) if return_outputs else loss


def build_trainer(recipe: Recipe, run: Run) -> CompletionOnlySFTTrainer:
    from datasets import Dataset

    train_rows = sft_rows(recipe)  # the train split, with the recipe's replay rows mixed in
    tokenizer = load_tokenizer(recipe.base_model)
    model = load_causal_lm(recipe.base_model, tokenizer)
    spec = recipe.sft
    served, templated = None, set()
    if spec.template_share > 0:
        served = ServedPrompts(tokenizer, recipe_template(recipe), recipe.department)
        templated = templated_rows(recipe)
        log.info("sft: %d of the department's rows behind the L1 template", len(templated))
    config = SFTConfig(
        **training_args(spec, run, recipe.seed),
        max_length=spec.max_length,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length",
        dataset_num_proc=None,
    )
    trainer = CompletionOnlySFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(prompt_completion(train_rows, served, templated)),
        processing_class=tokenizer,
        peft_config=lora_config(recipe.lora),
    )
    trainer.template_rows = sum(row in templated for row in train_rows)
    return trainer


def run_sft(recipe: Recipe, *, force: bool = False) -> dict[str, Any]:
    run = Run(recipe, "sft", template_inputs(recipe))
    if (cached := run.cached(force)) is not None:
        return cached
    run.start(force)
    setup_torch(recipe)
    trainer = build_trainer(recipe, run)
    figures = train_and_save(trainer, run)
    figures["train_rows"] = len(trainer.train_dataset)
    figures["template_rows"] = trainer.template_rows
    log.info("sft: adapter in %s after %.0f s", run.adapter, figures["train_runtime_s"])
    return run.finish(figures)
