"""Hot reload: edits are seen without a restart; a broken edit keeps the last good version."""

from __future__ import annotations

import logging

import pytest

from service.domain import ChatMessage
from service.prompts import TemplateError, TemplateStore
from tests.prompts.conftest import WriteTemplate

VARS = {"tenant": "acme", "department": "it", "date": "2026-01-15"}
GOOD = 'version: "1"\nsystem: "First {{ tenant }}."\n'
BROKEN = {
    "yaml": 'version: "2"\nsystem: "unclosed\n',
    "schema": 'version: "2"\ncot: maybe\n',
    "no version": 'system: "Second."\n',
    "jinja syntax": 'version: "2"\nsystem: "{% for x in %}"\n',
    "forbidden": 'version: "2"\nsystem: "{% include \'x\' %}"\n',
    "internals": 'version: "2"\nsystem: "{{ tenant.__class__ }}"\n',
}


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "service.prompts" and r.levelno == logging.ERROR
    ]


def system_text(store: TemplateStore, name: str) -> str:
    return store.render(store.get(name), [ChatMessage("user", "q")], VARS)[0].content


def test_an_edit_is_picked_up(store: TemplateStore, write: WriteTemplate) -> None:
    write("acme/it", GOOD)
    assert store.get("acme/it").ref == "acme/it@1"
    assert system_text(store, "acme/it") == "First acme."
    write("acme/it", 'version: "2"\nsystem: "Second {{ department }}."\ncot: visible\n')
    assert store.get("acme/it").ref == "acme/it@2"
    assert system_text(store, "acme/it").startswith("Second it.\n\nThink step by step")


def test_an_unchanged_file_is_not_read_again(store: TemplateStore, write: WriteTemplate) -> None:
    write("acme/it", GOOD)
    assert store.get("acme/it") is store.get("acme/it")


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_edit_keeps_the_previous_version(
    store: TemplateStore, write: WriteTemplate, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    write("acme/it", GOOD)
    good = store.get("acme/it")
    caplog.set_level(logging.INFO, logger="service.prompts")
    path = write("acme/it", BROKEN[kind])
    assert store.get("acme/it") == good
    assert system_text(store, "acme/it") == "First acme."
    [logged] = errors(caplog)
    assert str(path) in logged and "still serving acme/it@1" in logged
    store.get("acme/it")
    assert len(errors(caplog)) == 1, "one error per version of the file, not one per request"
    write("acme/it", 'version: "3"\nsystem: "Fixed."\n')
    assert store.get("acme/it").ref == "acme/it@3"
    assert system_text(store, "acme/it") == "Fixed."


def test_without_a_good_version_the_error_is_raised(
    store: TemplateStore, write: WriteTemplate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="service.prompts")
    write("acme/it", BROKEN["schema"])
    for _ in range(2):
        with pytest.raises(TemplateError, match=r"acme/it\.yaml: `cot:` must be one of"):
            store.get("acme/it")
    assert len(errors(caplog)) == 1
    write("acme/it", GOOD)
    assert store.get("acme/it").version == "1"


def test_a_deleted_file_keeps_serving_and_a_new_file_is_found(
    store: TemplateStore, write: WriteTemplate, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(TemplateError, match="no such template file"):
        store.get("acme/it")
    path = write("acme/it", GOOD)
    assert store.get("acme/it").version == "1"
    caplog.clear()
    path.unlink()
    assert store.get("acme/it").version == "1"
    [logged] = errors(caplog)
    assert "no such template file" in logged and "still serving acme/it@1" in logged
