"""Rendering: message order, the merged system message, chain of thought, variables."""

from __future__ import annotations

import datetime as dt

import pytest

from service.domain import ChatMessage
from service.prompts import Template, TemplateError, TemplateStore
from service.reasoning import COT_INSTRUCTION, MARKER
from tests.prompts.conftest import WriteTemplate

VARS = {"tenant": "acme", "department": "it", "date": "2026-01-15"}
SYSTEM = "Help {{ tenant }}/{{ department }} on {{ date }}."
TEMPLATE = Template("acme/it", "1", SYSTEM, (("u1", "a1"), ("u2", "a2")), "off")
FEW_SHOT = [
    ChatMessage("user", "u1"),
    ChatMessage("assistant", "a1"),
    ChatMessage("user", "u2"),
    ChatMessage("assistant", "a2"),
]


def test_order_without_a_client_system_message(store: TemplateStore) -> None:
    conversation = [ChatMessage("user", "hi"), ChatMessage("assistant", "hello"), ChatMessage("user", "bye")]
    rendered = store.render(TEMPLATE, conversation, VARS)
    assert rendered == [ChatMessage("system", "Help acme/it on 2026-01-15."), *FEW_SHOT, *conversation]


def test_client_system_and_developer_messages_follow_the_tenants(store: TemplateStore) -> None:
    messages = [
        ChatMessage("system", "Be terse."),
        ChatMessage("developer", "Use French."),
        ChatMessage("user", "hi"),
        ChatMessage("system", "A later system message stays in place."),
        ChatMessage("user", "again"),
    ]
    rendered = store.render(TEMPLATE, messages, VARS)
    system = "Help acme/it on 2026-01-15.\n\nBe terse.\n\nUse French."
    assert rendered == [ChatMessage("system", system), *FEW_SHOT, *messages[2:]]


@pytest.mark.parametrize("cot", ["visible", "hidden"])
def test_chain_of_thought_instruction_sits_between_tenant_and_client(store: TemplateStore, cot: str) -> None:
    template = Template("acme/legal", "1", "Be careful.", (), cot)  # type: ignore[arg-type]
    rendered = store.render(template, [ChatMessage("system", "Client."), ChatMessage("user", "q")], VARS)
    assert rendered[0] == ChatMessage("system", f"Be careful.\n\n{COT_INSTRUCTION}\n\nClient.")
    assert rendered[1:] == [ChatMessage("user", "q")]
    assert MARKER in COT_INSTRUCTION


def test_no_instruction_when_cot_is_off(store: TemplateStore) -> None:
    rendered = store.render(Template("a/b", "1", "S.", (), "off"), [ChatMessage("user", "q")], VARS)
    assert rendered == [ChatMessage("system", "S."), ChatMessage("user", "q")]


def test_a_system_message_always_comes_first(store: TemplateStore) -> None:
    """Without one, SmolLM2's chat template would add its own default system prompt."""
    bare = Template("a/b", "1", None, (("u", "a"),), "off")
    assert store.render(bare, [ChatMessage("user", "q")], VARS)[0] == ChatMessage("system", "")
    only_client = store.render(bare, [ChatMessage("system", "Mine."), ChatMessage("user", "q")], VARS)
    assert only_client[0] == ChatMessage("system", "Mine.")
    blank = store.render(Template("a/b", "1", "{# nothing #}", (), "off"), [ChatMessage("system", " ")], VARS)
    assert blank == [ChatMessage("system", "")]


def test_date_defaults_to_today(store: TemplateStore) -> None:
    before = dt.date.today().isoformat()
    rendered = store.render(TEMPLATE, [], {"tenant": "acme", "department": "it"})
    after = dt.date.today().isoformat()
    assert rendered[0].content in {f"Help acme/it on {before}.", f"Help acme/it on {after}."}


def test_tenants_file_values_and_optional_ones(store: TemplateStore) -> None:
    source = (
        "{{ company | default(tenant) }}\n"
        "{% if phone is defined %}\nCall {{ phone }}.\n{% endif %}\n"
        "Bye {{ date }}"
    )
    template = Template("a/b", "1", source, (), "off")
    with_values = store.render(template, [], VARS | {"company": "ACME Corp", "phone": "555"})
    assert with_values[0].content == "ACME Corp\nCall 555.\nBye 2026-01-15"
    assert store.render(template, [], VARS)[0].content == "acme\nBye 2026-01-15"


def test_an_unknown_variable_is_an_error_naming_file_and_variable(
    store: TemplateStore, write: WriteTemplate
) -> None:
    path = write("acme/it", 'version: "3"\nsystem: "Hello {{ compnay }}"\n')
    template = store.get("acme/it")  # detectable only with the variables in hand
    with pytest.raises(TemplateError) as caught:
        store.render(template, [ChatMessage("user", "q")], VARS)
    message = str(caught.value)
    assert str(path) in message and "acme/it@3" in message
    assert "'compnay' is undefined" in message
    assert "date, department, tenant" in message


def test_rendering_leaves_the_inputs_alone(store: TemplateStore) -> None:
    messages = (ChatMessage("system", "S"), ChatMessage("user", "q"))
    variables = dict(VARS)
    store.render(TEMPLATE, messages, variables)
    assert messages == (ChatMessage("system", "S"), ChatMessage("user", "q"))
    assert variables == VARS
