"""The real SmolLM2-135M-Instruct behind a real uvicorn server, asked through the openai SDK."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.conftest import API_KEY, LiveServer, make_settings

MODEL = "SmolLM2-135M-Instruct"


@pytest.mark.slow
def test_capital_of_france_is_paris(smollm2_dir: Path) -> None:
    settings = make_settings(smollm2_dir, model_name=MODEL, dtype="bfloat16", default_max_tokens=64)
    with LiveServer(settings) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120)
        assert [m.id for m in client.models.list()] == [MODEL]
        result = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
            max_tokens=32,
        )
    answer = result.choices[0].message.content or ""
    assert "Paris" in answer, answer
    assert result.usage is not None and 0 < result.usage.completion_tokens <= 32
