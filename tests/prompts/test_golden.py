"""The exact text the model sees (after SmolLM2's chat template), checked against golden files.

The cases render the repository's example templates in prompts/. After a deliberate change
to a template or to the rendering, rewrite the golden files and review their diff:

    LORAGATE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/prompts/test_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from service.domain import ChatMessage
from service.prompts import TemplateStore

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
UPDATE = os.environ.get("LORAGATE_UPDATE_GOLDEN") == "1"
DATE = "2026-01-15"  # fixed, so that the golden files do not change daily

# case -> (template, variables from the tenants file, the client's messages)
CASES: dict[str, tuple[str, dict[str, str], list[ChatMessage]]] = {
    "acme_it": (
        "acme/it",
        {"company": "ACME Corp"},
        [ChatMessage("user", "How do I reset my password?")],
    ),
    "acme_it_client_system": (
        "acme/it",
        {"company": "ACME Corp"},
        [
            ChatMessage("system", "Answer in French."),
            ChatMessage("user", "My printer is offline."),
            ChatMessage("assistant", "Is it switched on?"),
            ChatMessage("user", "Yes, the light is green."),
        ],
    ),
    "acme_legal_hidden_cot": (
        "acme/legal",
        {},
        [ChatMessage("user", "May we record customer calls?")],
    ),
    "globex_support_visible_cot": (
        "globex/support",
        {"support_email": "help@globex.example"},
        [
            ChatMessage("developer", "Reply in at most three sentences."),
            ChatMessage("user", "My parcel has not arrived."),
        ],
    ),
}


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_model_sees_the_golden_text(tokenizer: Any, case: str) -> None:
    name, extra, messages = CASES[case]
    tenant, department = name.split("/")
    store = TemplateStore(ROOT / "prompts")
    variables = {"tenant": tenant, "department": department, "date": DATE, **extra}
    rendered = store.render(store.get(name), messages, variables)
    text = tokenizer.apply_chat_template(  # what LocalEngine.render_prompt does
        [{"role": m.role, "content": m.content} for m in rendered], tokenize=False, add_generation_prompt=True
    )
    golden = GOLDEN / f"{case}.txt"
    if UPDATE:
        golden.write_bytes(text.encode("utf-8"))
    assert golden.is_file(), f"{golden} is missing: run with LORAGATE_UPDATE_GOLDEN=1 to write it"
    assert text == golden.read_bytes().decode("utf-8"), f"{case}: the rendered prompt differs from {golden}"
    assert text.startswith("<|im_start|>system\nYou are the ")  # the tenant's, not SmolLM2's default
    assert "named SmolLM" not in text and "<|im_start|>developer" not in text
