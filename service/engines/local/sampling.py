"""Turn one row of logits into the next token, as vLLM's sampling parameters say.

Order of operations (as vLLM's): repetition penalty, OpenAI's presence and frequency
penalties (over the completion's tokens only), ``logit_bias``, min_tokens (stop tokens
masked until enough tokens exist), then greedy argmax or temperature, top-k, top-p and
min-p followed by a draw from a per-request generator, so a fixed ``seed`` gives the same
text every time. A row's grammar mask (grammar.py) is applied before all of these.

No parameter the request schema admits can make a row's draw fail: temperatures below
``SAMPLING_EPS`` are greedy, and after the penalty and the temperature the row's logits are
made finite (NaN drops the token, +inf becomes the largest float), so the softmax always has
a candidate. Only a row whose every logit is NaN or -inf (a model fault, not a request's)
raises :class:`SamplingError`, and the scheduler fails that row's request alone.
"""

from __future__ import annotations

import torch

from ...domain import SamplingParams

_LARGEST = torch.finfo(torch.float32).max
LogitBias = tuple[torch.Tensor, torch.Tensor]  # token ids, biases


class SamplingError(ValueError):
    """No token can be drawn from this row (every logit NaN or -inf)."""


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


def needs_processing(params: SamplingParams, generated: int) -> bool:
    """False when the plain argmax of the raw logits is the answer."""
    return (
        not params.greedy
        or params.repetition_penalty != 1.0
        or generated < params.min_tokens
        or has_openai_penalties(params)
    )


def has_openai_penalties(params: SamplingParams) -> bool:
    return params.presence_penalty != 0.0 or params.frequency_penalty != 0.0 or bool(params.logit_bias)


def apply_openai_penalties(
    logits: torch.Tensor, params: SamplingParams, counts: torch.Tensor | None, bias: LogitBias | None
) -> None:
    """OpenAI's: logit -= frequency * count + presence * (count > 0); then logit += bias, in place."""
    if counts is not None:
        if params.frequency_penalty != 0.0:
            logits.sub_(counts, alpha=params.frequency_penalty)
        if params.presence_penalty != 0.0:
            logits.sub_((counts > 0).float(), alpha=params.presence_penalty)
    if bias is not None:
        logits.index_add_(0, bias[0], bias[1])


def make_bias(params: SamplingParams, device: torch.device) -> LogitBias | None:
    if not params.logit_bias:
        return None
    ids, values = zip(*params.logit_bias, strict=True)
    return (
        torch.tensor(ids, dtype=torch.long, device=device),
        torch.tensor(values, dtype=torch.float32, device=device),
    )


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    if penalty == 1.0 or seen.numel() == 0:
        return
    values = logits.index_select(0, seen)
    values = torch.where(values > 0, values / penalty, values * penalty)
    logits.index_copy_(0, seen, values)


def filter_top_k_top_p_min_p(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> None:
    """Set the logits of excluded tokens to -inf, in place."""
    if top_k > 0 and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits.masked_fill_(logits < kth, float("-inf"))
    if min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        logits.masked_fill_(probs < min_p * probs.max(), float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative > top_p
        drop[1:] = drop[:-1].clone()  # keep the token that crosses top_p
        drop[0] = False
        logits[order[drop]] = float("-inf")


def next_token(
    logits: torch.Tensor,
    params: SamplingParams,
    *,
    seen: torch.Tensor,
    generated: int,
    stop_token_ids: torch.Tensor,
    generator: torch.Generator | None,
    counts: torch.Tensor | None = None,
    bias: LogitBias | None = None,
) -> int:
    """Pick the next token for one sequence. ``logits`` is a float32 row, changed in place.

    ``counts``: how often each token occurs in the completion so far (for the presence and
    frequency penalties); ``bias``: ``logit_bias`` as tensors (``make_bias``).
    """
    apply_repetition_penalty(logits, seen, params.repetition_penalty)
    apply_openai_penalties(logits, params, counts, bias)
    if generated < params.min_tokens:
        logits[stop_token_ids] = float("-inf")
    if params.greedy:
        return int(torch.argmax(logits))
    logits.div_(params.temperature)
    make_finite(logits)
    filter_top_k_top_p_min_p(logits, params.top_k, params.top_p, params.min_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def make_finite(logits: torch.Tensor) -> None:
    """NaN -> -inf (never drawn), +inf -> the largest float, in place; raise if nothing is left."""
    torch.nan_to_num_(logits, nan=float("-inf"), posinf=_LARGEST)
    if not bool(torch.isfinite(logits.max())):
        raise SamplingError("every token of this row has a NaN or -inf logit")
