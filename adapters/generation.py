"""Batched generation and response losses on held-out rows, for eval, RLAIF and the judges.

The prompt is the user turn rendered by the base model's chat template with the generation
prompt, exactly what the gateway sends for a one-message chat without a system turn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm


def render_prompt(tokenizer: Any, user: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    temperature: float = 0.0,
    seed: int = 0,
    desc: str = "generate",
) -> list[str]:
    """One answer per prompt: greedy when `temperature` is 0, else sampled (seeded)."""
    tokenizer.padding_side = "left"
    model.eval()
    generator_seed = torch.random.initial_seed()
    torch.manual_seed(seed)
    answers: list[str] = []
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding per batch
    by_index: dict[int, str] = {}
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        indices = order[start : start + batch_size]
        texts = [render_prompt(tokenizer, prompts[i]) for i in indices]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            **(sampling if temperature > 0 else {"do_sample": False}),
        )
        new = output[:, batch["input_ids"].shape[1] :]
        for i, ids in zip(indices, new, strict=True):
            by_index[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    answers = [by_index[i] for i in range(len(prompts))]
    torch.manual_seed(generator_seed)
    return answers


@torch.no_grad()
def response_loss(
    model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 8
) -> dict[str, float]:
    """Mean cross-entropy per response token (the answer and its end-of-turn), and its perplexity."""
    tokenizer.padding_side = "right"
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(prompts), batch_size):
        rows = []
        for prompt, response in zip(
            prompts[start : start + batch_size], responses[start : start + batch_size], strict=True
        ):
            head = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
            full = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                tokenize=False,
            )
            ids = tokenizer(full, add_special_tokens=False)["input_ids"]
            rows.append((ids, len(head)))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, head_len) in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
            # the answer and <|im_end|>; the template's trailing newline is not the model's to predict
            end = len(ids) - 1 if tokenizer.decode(ids[-1:]) == "\n" else len(ids)
            labels[r, head_len:end] = torch.tensor(ids[head_len:end])
        logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits
        targets = labels[:, 1:].to(model.device)
        picked = targets != -100
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1][picked].float(), targets[picked], reduction="sum"
        )
        total += float(losses)
        count += int(picked.sum())
    loss = total / max(count, 1)
    return {"loss": round(loss, 4), "perplexity": round(math.exp(loss), 3), "tokens": count}
