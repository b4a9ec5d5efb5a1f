"""A template cannot reach Python internals or the file system."""

from __future__ import annotations

import pytest

from service.domain import ChatMessage
from service.prompts import Template, TemplateError, TemplateStore
from tests.prompts.conftest import WriteTemplate

VARS = {"tenant": "acme", "department": "it", "date": "2026-01-15"}


def template_file(source: str) -> str:
    return f'version: "1"\nsystem: |\n  {source}\n'


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ tenant['__class__'] }}",
        "{{ tenant|attr('__class__') }}",
        "{{ joiner._joiner__sep }}",
        "{% include 'acme/it.yaml' %}",
        "{% import 'macros.j2' as m %}",
        "{% from 'macros.j2' import m %}",
        "{% extends '/etc/passwd' %}",
    ],
)
def test_forbidden_constructs_are_refused_at_load(
    store: TemplateStore, write: WriteTemplate, source: str
) -> None:
    path = write("acme/evil", template_file(source))
    with pytest.raises(TemplateError, match="is not allowed") as caught:
        store.get("acme/evil")
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "source",
    [
        "{% set a = '__cla' ~ 'ss__' %}{{ tenant|attr(a) }}",
        "{% set a = '__cla' ~ 'ss__' %}{{ tenant[a] }}",
        "{% set i = '__in' ~ 'it__' %}{{ cycler|attr(i) }}",
        "{{ '{0.__class__.__mro__}'.format(tenant) }}",
        "{{ [tenant]|map(attribute='__class__')|first }}",
    ],
)
def test_what_only_rendering_reveals_the_sandbox_refuses(
    store: TemplateStore, write: WriteTemplate, source: str
) -> None:
    path = write("acme/sly", template_file(source))
    template = store.get("acme/sly")
    with pytest.raises(TemplateError, match="unsafe") as caught:
        store.render(template, [ChatMessage("user", "q")], VARS)
    assert str(path) in str(caught.value)


def test_the_sandbox_is_immutable(store: TemplateStore) -> None:
    template = Template("acme/it", "1", "{% set xs = [1] %}{{ xs.append(2) }}{{ xs }}", (), "off")
    with pytest.raises(TemplateError, match="unsafe"):
        store.render(template, [], VARS)


def test_a_template_built_elsewhere_gets_the_same_checks(store: TemplateStore) -> None:
    template = Template("acme/it", "1", "{% include 'x' %}", (), "off")
    with pytest.raises(TemplateError, match=r"acme/it\.yaml.*include %\} is not allowed"):
        store.render(template, [], VARS)
