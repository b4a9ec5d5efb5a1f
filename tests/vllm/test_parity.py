"""vLLM and the embedded engine (transformers + PEFT) give the same greedy tokens, in float32."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import TINY_MODEL, LiveServer

pytestmark = pytest.mark.vllm

PROMPTS = [
    "Write a haiku about the sea.",
    "My laptop will not boot. What should I do?",
    "Summarise: rent is due.",
]


def greedy(server: LiveServer, key: str, department: str, prompt: str) -> str:
    client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=60)
    result = client.chat.completions.create(
        model=TINY_MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=24,
        temperature=0,
        extra_body={"ignore_eos": True},
        extra_headers={"X-Department": department},
    )
    assert result.usage is not None and result.usage.completion_tokens == 24
    # Cut inside a multi-byte character, the embedded engine ends on U+FFFD and vLLM drops the
    # partial character: the same tokens, one decoding difference at the very end
    return (result.choices[0].message.content or "").removesuffix("\ufffd")


@pytest.mark.parametrize("department", ["plain", "it", "legal"])
def test_vllm_matches_the_embedded_engine(
    vllm_gateway: LiveServer, embedded_gateway: LiveServer, acme_key: str, department: str
) -> None:
    for prompt in PROMPTS:
        expected = greedy(embedded_gateway, acme_key, department, prompt)
        assert greedy(vllm_gateway, acme_key, department, prompt) == expected, prompt


def test_each_adapter_changes_the_output(vllm_gateway: LiveServer, acme_key: str) -> None:
    """Else the parity above could not tell an adapter from the base model."""
    texts = {d: greedy(vllm_gateway, acme_key, d, PROMPTS[0]) for d in ("plain", "it", "legal")}
    assert len(set(texts.values())) == 3, texts
