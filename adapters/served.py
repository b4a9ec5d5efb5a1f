"""Prompts as the gateway serves them: the department's L1 template, then the model's chat template.

The L1 rows of the evaluation (the base model with the template, and the template with the L2
adapter, which is what a department with both gets) must see the very text the gateway sends.
So this module does not re-implement either step: the template is loaded and rendered by
`service.prompts.TemplateStore` (system prompt, few-shot pairs, message order), and the messages
become text through the local engine's own `render` (`service.engines.local.tools`).

Without a template the conversation is the user turn alone, as in training, and SmolLM2's chat
template adds its default system prompt, as the gateway does for a department without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from service.domain import ChatMessage, GenerationRequest, SamplingParams
from service.engines.local.tools import render, template_traits
from service.prompts import Template, TemplateStore

from .recipe import Recipe

# Fixed values for the template's variables, so that an evaluation does not change with the date
VARIABLES = {"tenant": "demo", "date": "2026-01-01"}
TEMPLATES_DIR = Path(__file__).parent / "templates"


class ServedPrompts:
    """Renders user prompts into model input text, with or without a department's L1 template."""

    def __init__(self, tokenizer: Any, template: Path | None, department: str):
        self.tokenizer = tokenizer
        self.traits = template_traits(tokenizer)
        self.variables = VARIABLES | {"department": department}
        self.store: TemplateStore | None = None
        self.template: Template | None = None
        if template is not None:
            self.store = TemplateStore(template.parent)
            self.template = self.store.get(template.stem)

    def messages(self, prompt: str, l1: bool) -> list[ChatMessage]:
        conversation = [ChatMessage("user", prompt)]
        if not l1:
            return conversation
        if self.store is None or self.template is None:
            raise ValueError("no L1 template for this department")
        return self.store.render(self.template, conversation, self.variables)

    def text(self, prompt: str, l1: bool) -> str:
        request = GenerationRequest("eval", self.messages(prompt, l1), SamplingParams(max_tokens=1))
        return render(self.tokenizer, self.traits, request)


def default_template(department: str) -> Path | None:
    """The demo department's L1 template shipped with the factory (adapters/templates/<department>.yaml)."""
    path = TEMPLATES_DIR / f"{department}.yaml"
    return path if path.is_file() else None


def recipe_template(recipe: Recipe) -> Path | None:
    """The recipe's `data.template`, else the demo department's shipped one."""
    return recipe.data.template or default_template(recipe.department)


def as_chat(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """Messages as the role/content dicts TRL and chat templates take (templates hold no tool turns)."""
    return [{"role": m.role, "content": m.content} for m in messages]


@torch.no_grad()
def generate_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    desc: str = "",
) -> list[str]:
    """Greedy answers to already-rendered prompt texts (batched by length, left-padded)."""
    tokenizer.padding_side = "left"
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    by_index: dict[int, str] = {}
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        indices = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in indices], return_tensors="pt", padding=True, add_special_tokens=False
        )
        output = model.generate(
            **batch.to(model.device),
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=False,
        )
        for i, ids in zip(indices, output[:, batch["input_ids"].shape[1] :], strict=True):
            by_index[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return [by_index[i] for i in range(len(texts))]
