"""Small LoRA adapters built at test time (no weights are committed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def make_adapter(base_dir: Path, out_dir: Path, *, rank: int = 8, seed: int = 0, **lora: Any) -> Path:
    """A LoRA on q/v projections with random (non-zero) B matrices, so it changes the output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], **lora)
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(out_dir)
    return out_dir
