"""The L1 rows see the prompt the gateway serves: the same template store, the same engine render."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from adapters.modeling import load_tokenizer
from adapters.served import VARIABLES, ServedPrompts, default_template
from service.domain import ChatMessage
from service.prompts import TemplateStore


@pytest.mark.parametrize("department", ["it-helpdesk", "legal"])
def test_l1_messages_are_what_the_gateway_resolves(tiny_model_dir: Path, department: str) -> None:
    template = default_template(department)
    assert template is not None
    served = ServedPrompts(load_tokenizer(tiny_model_dir), template, department)
    prompt = "My VPN drops every hour."
    store = TemplateStore(template.parent)  # the gateway's serving path: resolve, then messages
    rendered = asyncio.run(store.resolve(template.stem, VARIABLES | {"department": department}))
    assert served.messages(prompt, l1=True) == rendered.messages([ChatMessage("user", prompt)])
    text = served.text(prompt, l1=True)
    assert text.startswith("<|im_start|>system\nYou are the ") and "{{" not in text
    assert text.count("<|im_start|>assistant") == len(rendered.template.few_shot) + 1  # few-shot, then ours
    assert text.endswith(f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")


def test_without_template_the_prompt_is_the_training_prompt(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    served = ServedPrompts(tokenizer, None, "legal")
    text = served.text("Is this clause risky?", l1=False)
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Is this clause risky?"}], tokenize=False, add_generation_prompt=True
    )
    assert text == expected and "SmolLM" in text  # the model's default system prompt, as in training
    with pytest.raises(ValueError, match="no L1 template"):
        served.text("x", l1=True)
