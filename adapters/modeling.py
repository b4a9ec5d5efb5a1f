"""Models, tokenizers and trainer settings shared by every training step.

Weights are float32 on the CPU: on AVX2-only CPUs bf16 is emulated and about twice as slow,
and float32 gives the same greedy tokens as the gateway's embedded engine. On a GPU the
trainers use bf16 mixed precision when the device supports it, and models loaded here for
evaluation, sampling and judging go to the GPU when there is one (`device()`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from service.registry import check_servable

from .recipe import LoraSpec, Recipe, TrainSpec
from .runs import Run

log = logging.getLogger("adapters")
PAD_TOKEN = "<|endoftext|>"  # id 0 in SmolLM2; <|im_end|> as pad would mask the end of every answer


def on_gpu() -> bool:
    return torch.cuda.is_available()


def device() -> torch.device:
    """Where models for generation and scoring run: the first GPU when there is one, else the CPU."""
    return torch.device("cuda" if on_gpu() else "cpu")


def setup_torch(recipe: Recipe) -> None:
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)


def load_tokenizer(base: Path, padding_side: str = "right") -> Any:
    """The base model's own tokenizer and chat template; the pad token is `<|endoftext|>`, never added."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if PAD_TOKEN in tokenizer.get_vocab():
        tokenizer.pad_token = PAD_TOKEN
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_causal_lm(base: Path, tokenizer: Any) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device())
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def lora_config(spec: LoraSpec, task_type: str = "CAUSAL_LM") -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        bias="none",
        task_type=task_type,
    )


def load_trainable_adapter(base: Path, adapter: Path, tokenizer: Any) -> Any:
    """The base model with an earlier step's adapter, trainable (L3 continues the L2 adapter)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_causal_lm(base, tokenizer), adapter, is_trainable=True)


def training_args(spec: TrainSpec, run: Run, seed: int) -> dict[str, Any]:
    """Keyword arguments every TRL config of this package shares."""
    gpu = on_gpu()
    return {
        "output_dir": str(run.checkpoints),
        "num_train_epochs": spec.epochs,
        "max_steps": spec.max_steps,
        "learning_rate": spec.learning_rate,
        "per_device_train_batch_size": spec.batch_size,
        "gradient_accumulation_steps": spec.grad_accum,
        "warmup_steps": spec.warmup_ratio,
        "lr_scheduler_type": "cosine",
        "logging_steps": spec.logging_steps,
        "save_strategy": "steps",
        "save_steps": spec.save_steps,
        "save_total_limit": 2,
        "report_to": "none",
        "seed": seed,
        "data_seed": seed,
        "use_cpu": not gpu,
        "bf16": gpu and torch.cuda.is_bf16_supported(),
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
    }


class JsonLogCallback(TrainerCallback):
    """Appends every logged dict to the run's log.jsonl."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
    ) -> None:
        if logs:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def train_and_save(trainer: Any, run: Run, *, servable: bool = True) -> dict[str, Any]:
    """Train (resuming from the run's last checkpoint), save the adapter, return the trainer's figures."""
    trainer.add_callback(JsonLogCallback(run.dir / "log.jsonl"))
    checkpoint = run.last_checkpoint()
    if checkpoint:
        log.info("%s: resuming from %s", run.step, checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    save_adapter(trainer.model, run.adapter, servable=servable)
    history = [e for e in trainer.state.log_history if "loss" in e]
    return {
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1),
        "train_loss": round(result.training_loss, 4),
        "first_logged_loss": history[0]["loss"] if history else None,
        "last_logged_loss": history[-1]["loss"] if history else None,
        "global_step": trainer.state.global_step,
        "resumed_from": checkpoint,
    }


def save_adapter(model: Any, folder: Path, *, servable: bool = True) -> Path:
    """The trained ("default") adapter only, as a standard PEFT folder; checked as vLLM would."""
    model.save_pretrained(folder, selected_adapters=["default"], safe_serialization=True)
    if servable:
        check_servable(folder)
    return folder
