"""Logprobs of sampled tokens and of prompt tokens, from the model's raw distribution.

As vLLM's default (``raw_logprobs``): the log-softmax of the logits before penalties,
temperature, filters or a grammar mask. Only rows that ask pay for it.

Prompt logprobs need the logits of every prompt position: L x vocab floats, 1.6 GB for an
8k prompt on a 49k vocabulary. Instead the prefill keeps the hidden states that go into the
output layer (a hook hands it only the last position, as a normal prefill does), and the
logits are computed afterwards in chunks of ``CHUNK`` positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ...domain import TokenLogprob, TopLogprob
from .text import Detokenizer

CHUNK = 128  # prompt positions per output-layer call: CHUNK x vocab floats at a time


class TokenTexts:
    """Each token's text alone (``decode([id])``) and its UTF-8 bytes, decoded once."""

    def __init__(self, tokenizer: Detokenizer):
        self._tokenizer = tokenizer
        self._cache: dict[int, tuple[str, tuple[int, ...]]] = {}

    def __call__(self, token: int) -> tuple[str, tuple[int, ...]]:
        hit = self._cache.get(token)
        if hit is None:
            text = self._tokenizer.decode([token])
            hit = self._cache[token] = (text, tuple(text.encode("utf-8")))
        return hit


def entry(logprobs: torch.Tensor, token: int, top_n: int, texts: TokenTexts) -> TokenLogprob:
    """``token``'s entry from one row of log-probabilities, with its ``top_n`` alternatives (sorted)."""
    text, data = texts(token)
    top: tuple[TopLogprob, ...] = ()
    if top_n > 0:
        values, ids = torch.topk(logprobs, min(top_n, logprobs.shape[-1]))
        top = _tops(values.tolist(), ids.tolist(), texts)
    return TokenLogprob(token=text, logprob=float(logprobs[token]), bytes=data, top=top)


def _tops(values: list[float], ids: list[int], texts: TokenTexts) -> tuple[TopLogprob, ...]:
    out = []
    for value, token in zip(values, ids, strict=True):
        text, data = texts(token)
        out.append(TopLogprob(token=text, logprob=value, bytes=data))
    return tuple(out)


def sampled(logits: torch.Tensor) -> torch.Tensor:
    """A row's raw log-probabilities (float32), taken before anything changes the logits."""
    return torch.log_softmax(logits.float(), dim=-1)


@contextmanager
def output_layer_inputs(model: Any) -> Iterator[list[torch.Tensor]]:
    """Capture what goes into ``model``'s output layer, and let it compute the last position only.

    Run the forward with ``logits_to_keep=0`` inside: the model then hands the layer every
    position, the hook keeps them and passes the last one on, so ``logits`` is [batch, 1, vocab].
    """
    head = model.get_output_embeddings()
    captured: list[torch.Tensor] = []

    def keep(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        captured.append(args[0])
        return (args[0][:, -1:, :], *args[1:])

    handle = head.register_forward_pre_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def prompt_entries(
    model: Any, hidden: torch.Tensor, prompt_ids: Sequence[int], top_n: int, texts: TokenTexts
) -> list[TokenLogprob | None]:
    """Each prompt token's logprob given the tokens before it; the first has none.

    ``hidden``: [positions, hidden size] for this prompt alone (its last ``len(prompt_ids)`` rows).
    """
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    out: list[TokenLogprob | None] = [None]
    hidden = hidden[-len(prompt_ids) : -1]  # the last position predicts no prompt token
    targets = torch.tensor(prompt_ids[1:], device=hidden.device)
    for start in range(0, len(prompt_ids) - 1, CHUNK):
        logits = head(hidden[start : start + CHUNK]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        rows = torch.log_softmax(logits, dim=-1)
        chosen = rows.gather(1, targets[start : start + CHUNK].unsqueeze(1)).squeeze(1).tolist()
        tops: list[tuple[TopLogprob, ...]] = [()] * len(chosen)
        if top_n > 0:
            values, ids = torch.topk(rows, min(top_n, rows.shape[-1]), dim=-1)
            tops = [_tops(v, i, texts) for v, i in zip(values.tolist(), ids.tolist(), strict=True)]
        for offset, (value, top) in enumerate(zip(chosen, tops, strict=True)):
            text, data = texts(prompt_ids[start + offset + 1])
            out.append(TokenLogprob(token=text, logprob=value, bytes=data, top=top))
    return out
