"""Building requests, draining streams, and the sequential reference with ``generate``."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import torch

from service.domain import ChatMessage, Delta, GenerationRequest, SamplingParams

_ids = itertools.count()


@dataclass
class Choice:
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def make_request(content: str, max_tokens: int, *, n: int = 1, **sampling: Any) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(
        request_id=f"req-{next(_ids)}",
        messages=[ChatMessage("user", content)],
        sampling=SamplingParams(max_tokens=max_tokens, **sampling),
        n=n,
    )


async def drain(
    deltas: AsyncIterator[Delta], log: list[tuple[str, Delta]] | None = None, name: str = ""
) -> dict[int, Choice]:
    """Every choice's text and finishing figures; ``log`` records the arrival order."""
    choices: dict[int, Choice] = {}
    async for delta in deltas:
        if log is not None:
            log.append((name, delta))
        choice = choices.setdefault(delta.index, Choice())
        assert choice.finish_reason is None, "a delta after the finishing one"
        choice.text += delta.text
        if delta.finish_reason is not None:
            choice.finish_reason = delta.finish_reason
            choice.prompt_tokens, choice.completion_tokens = delta.prompt_tokens, delta.completion_tokens
    return choices


def greedy_ids(
    model: Any, tokenizer: Any, prompt_ids: list[int], max_tokens: int, **generate: Any
) -> list[int]:
    """Greedy ``generate`` on one prompt alone: the new token ids (an EOS ends them)."""
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            **generate,
        )
    return list(out[0, len(prompt_ids) :].tolist())


def reference(model: Any, tokenizer: Any, prompt_ids: list[int], max_tokens: int, **generate: Any) -> Choice:
    """What every batched greedy run of this prompt must reproduce."""
    new = greedy_ids(model, tokenizer, prompt_ids, max_tokens, **generate)
    stopped = new[-1] == tokenizer.eos_token_id
    return Choice(
        text=tokenizer.decode(new, skip_special_tokens=True),
        finish_reason="stop" if stopped else "length",
        prompt_tokens=len(prompt_ids),
        completion_tokens=len(new),
    )
