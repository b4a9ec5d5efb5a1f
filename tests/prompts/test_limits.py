"""A render's limits: time, steps and sizes, each refused quickly and before it builds anything big."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from service.domain import ChatMessage
from service.prompts import Template, TemplateError, TemplateStore
from tests.prompts.attacks import ATTACKS, SLOW
from tests.prompts.conftest import LIMIT, Events, WriteTemplate

VARS = {"tenant": "acme", "department": "it", "date": "2026-01-15"}


def system_text(store: TemplateStore, source: str) -> str:
    return store.render(Template("acme/it", "1", source, (), "off"), [], VARS)[0].content


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_each_attack_is_refused_quickly(bounded: TemplateStore, name: str) -> None:
    source, refusal = ATTACKS[name]
    started = time.monotonic()
    with pytest.raises(TemplateError, match=refusal) as caught:
        system_text(bounded, source)
    assert time.monotonic() - started < 2 * LIMIT
    assert "acme/it@1" in str(caught.value) and len(str(caught.value)) < 1000


def test_the_time_limit_is_what_stops_a_slow_render(prompts_root: Path, events: Events) -> None:
    store = TemplateStore(prompts_root, events, render_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TemplateError, match="RenderLimitError: the time limit ran out"):
        system_text(store, SLOW)
    assert 0.3 <= time.monotonic() - started < 0.6


def test_a_prompt_over_max_chars_is_refused(prompts_root: Path) -> None:
    store = TemplateStore(prompts_root, max_chars=300)
    assert len(system_text(store, "{{ 'x' * 300 }}")) == 300
    with pytest.raises(TemplateError, match=r"the system prompt is 301 characters long \(at most 300\)"):
        system_text(store, "{{ 'x' * 300 }}{{ tenant[0] }}")
    with pytest.raises(TemplateError, match="rendered text would be"):  # stopped while rendering
        system_text(store, "{% for i in range(1000) %}{{ tenant }}{% endfor %}")


def test_loading_runs_none_of_the_template(bounded: TemplateStore, write: WriteTemplate) -> None:
    """Jinja folded `'A' * 200000000` while compiling: the gateway took 763 MB at load."""
    write("acme/it", 'version: "1"\nsystem: "{% set s = \'A\' * 200000000 %}{{ s[:3] }}"\n')
    tracemalloc.start()
    try:
        template = bounded.get("acme/it")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"loading took {peak / 2**20:.0f} MB"
    with pytest.raises(TemplateError, match="repeated string would be 200,000,000 characters"):
        bounded.render(template, [ChatMessage("user", "q")], VARS)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('version: "1"\nsystem: "{{ tenant|urlize }}"\n', "No filter named 'urlize'"),
        ('version: "1"\nsystem: "{{ {\'a\': 1}|xmlattr }}"\n', "No filter named 'xmlattr'"),
        ('version: "1"\nsystem: "' + "x" * 140_000 + '"\n', "at most 131,072"),
        ('version: "1"\nsystem: "{{ ' + "(" * 1000 + "1" + ")" * 1000 + ' }}"\n', "cannot compile"),
        ("version: 2026-13-45\n", "invalid YAML: ValueError"),
        ('version: "1"\nfew_shot: ' + "[" * 5000 + "]" * 5000 + "\n", "invalid YAML"),
        ('version: "1"\nsystem: "' + "x" * (1 << 20) + '"\n', "larger than 1,048,576 bytes"),
    ],
)
def test_refused_at_load(store: TemplateStore, write: WriteTemplate, text: str, message: str) -> None:
    path = write("acme/bad", text)
    with pytest.raises(TemplateError, match=message) as caught:
        store.get("acme/bad")
    assert str(path) in str(caught.value)


def test_what_prompts_use_still_works(store: TemplateStore) -> None:
    source = (
        "{% set ns = namespace(n=0, seen=[]) %}"
        "{% for x in ['b', 'a', 'c'] %}{% set ns.n = ns.n + loop.index %}{% set ns.seen = ns.seen + [x] %}"
        "{% endfor %}{{ ns.n }} {{ ns.seen|sort|join(',') }}|"
        "{{ '%s-%03d'|format(tenant, 7) }} {{ '{}:{:>4}'.format(department, 1) }} {{ '%s!' % tenant }}|"
        "{{ tenant ~ '/' ~ department }} {{ tenant[::-1] }} {{ tenant[1:3] }}|"
        "{{ 1 < 2 < 3 }} {{ 'c' in tenant }} {{ tenant != 'x' }} {{ 4 is even }} {{ 'x' is in ['x'] }}|"
        "{{ [1, 2, 3]|sum }} {{ 2.456|round(1) }} {{ [3, 1, 2]|max }} {{ {'b': 1, 'a': 2}|dictsort|first }}|"
        "{{ 'a b c'|wordcount }} {{ tenant|upper|center(8) }}|{{ 'x\ny'|indent(2) }}|{{ tenant * 2 }}|"
        "{{ [1, 2, 3, 4]|batch(3, 0)|list }} {{ {'k': [1]}|tojson }} {{ ', '.join(['p', 'q']) }}|"
        "{% macro li(x) %}- {{ x }}{% endmacro %}{{ li(nope) if nope is defined else li('m') }}|"
        "{% for x in [[1, [2]], [3]] recursive %}{% if x is iterable %}{{ loop(x) }}{% else %}{{ x }}"
        "{% endif %}{% endfor %}|{% set c = cycler('a', 'b') %}{{ c.next() }}{{ c.next() }}{{ c.next() }}|"
        "{% filter upper %}up{% endfilter %} {% set b %}block {{ date }}{% endset %}{{ b }}"
    )
    assert system_text(store, source) == (
        "6 a,b,c|acme-007 it:   1 acme!|acme/it emca cm|True True True True True|"
        "6 2.5 3 ('a', 2)|3   ACME  |x\n  y|acmeacme|[[1, 2, 3], [4, 0, 0]] {\"k\": [1]} p, q|- m|123|aba|"
        "UP block 2026-01-15"
    )
