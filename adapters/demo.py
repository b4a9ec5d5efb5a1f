"""A demo LoRA adapter for the served model, to try the registry and routing end to end.

    .venv/bin/python -m adapters.demo --out data/demo-adapters/helpdesk --seed 1

Its weights are random (small), not trained: it changes the model's wording a
little and proves that a request went through it. Real department adapters come
from the training recipes of this package.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def build(base: Path, out: Path, *, rank: int = 8, seed: int = 0, scale: float = 0.02) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    peft_model.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the adapter into")
    parser.add_argument("--base", type=Path, default=Path("data/models/smollm2-135m-instruct"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank", type=int, default=8, help="one of vLLM's ranks: 1, 8, 16, 32, 64, ...")
    args = parser.parse_args(argv)
    print(build(args.base, args.out, rank=args.rank, seed=args.seed))


if __name__ == "__main__":
    main()
