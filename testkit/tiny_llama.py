"""A tiny random Llama that speaks SmolLM2's tokenizer and chat template.

Its compute is negligible. The tests get a model that loads and answers at once on
the embedded engine and on vLLM; the benchmark's probe (``loadtests/bench_vllm_probe.py``) gets
a vLLM that spends its time on its own serving path (HTTP, tokenizer, scheduler,
detokenizer), as it does on a GPU, not on this CPU's matrix products.
"""

from __future__ import annotations

from pathlib import Path

import torch


def write_tiny_llama(
    path: Path,
    tokenizer_dir: Path,
    *,
    heads: int = 4,
    kv_heads: int = 2,
    std: float = 0.02,
    positions: int = 1024,
) -> Path:
    """A 2-layer random Llama (hidden 64, float32) with SmolLM2's tokenizer and chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=std,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
