"""Loading and validating template files."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.prompts import Template, TemplateError, TemplateStore
from tests.prompts.conftest import WriteTemplate

REPO_PROMPTS = Path(__file__).resolve().parents[2] / "prompts"


def test_a_full_template_loads(store: TemplateStore, write: WriteTemplate) -> None:
    write(
        "acme/it",
        """\
        version: "1.2.0"
        cot: hidden
        system: |
          You help {{ tenant }}.
        few_shot:
          - user: "  Hi  "
            assistant: |
              Hello.
          - {user: Q2, assistant: A2}
        """,
    )
    template = store.get("acme/it")
    assert template == Template(
        name="acme/it",
        version="1.2.0",
        system="You help {{ tenant }}.\n",
        few_shot=(("Hi", "Hello."), ("Q2", "A2")),
        cot="hidden",
    )
    assert template.ref == "acme/it@1.2.0"


@pytest.mark.parametrize(
    ("yaml_value", "expected"),
    [("3", "3"), ("2026-01-15", "2026-01-15"), ('"1.10"', "1.10"), ("v2-beta+7", "v2-beta+7")],
)
def test_version_forms(store: TemplateStore, write: WriteTemplate, yaml_value: str, expected: str) -> None:
    write("t/v", f"version: {yaml_value}\n")
    assert store.get("t/v").version == expected


@pytest.mark.parametrize(
    ("yaml_value", "expected"), [("off", "off"), ('"off"', "off"), ("visible", "visible")]
)
def test_cot_forms(store: TemplateStore, write: WriteTemplate, yaml_value: str, expected: str) -> None:
    write("t/c", f'version: "1"\ncot: {yaml_value}\n')  # a bare `off` is YAML's false
    assert store.get("t/c").cot == expected


def test_defaults(store: TemplateStore, write: WriteTemplate) -> None:
    write("t/min", 'version: "1"\n')
    assert store.get("t/min") == Template("t/min", "1", None, (), "off")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('system: "hi"\n', "`version:` is required"),
        ('version: "1"\ncot: sometimes\n', "`cot:` must be one of off, visible, hidden"),
        ('version: "1"\ncot: on\n', "`cot:` must be one of"),
        ("version: 1.10\n", "reads as a number"),
        ('version: "1 beta"\n', "`version:` must be"),
        ('version: "1"\nsystem: [a]\n', "`system:` must be text"),
        ('version: "1"\nsytem: hi\n', "unknown key(s) sytem"),
        ('version: "1"\nfew_shot: {user: a, assistant: b}\n', "must be a list"),
        ('version: "1"\nfew_shot: [{user: a}]\n', "few_shot item 1 must have exactly"),
        ('version: "1"\nfew_shot: [{user: a, assistant: b}, {user: a, assistant: ""}]\n', "few_shot item 2"),
        ("- just\n- a list\n", "expected a mapping"),
        ('version: "1"\nsystem: "x: [\n', "invalid YAML"),
        ('version: "1"\nsystem: "{{ tenant "\n', "Jinja syntax error"),
        ('version: "1"\nsystem: "{% if x %}open"\n', "Jinja syntax error at line 1"),
    ],
)
def test_invalid_files_are_refused_naming_the_file(
    store: TemplateStore, write: WriteTemplate, text: str, message: str
) -> None:
    path = write("acme/bad", text)
    with pytest.raises(TemplateError, match="acme/bad.yaml") as caught:
        store.get("acme/bad")
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_missing_file(store: TemplateStore) -> None:
    with pytest.raises(TemplateError, match=r"nope/it\.yaml: no such template file"):
        store.get("nope/it")


@pytest.mark.parametrize("name", ["../secrets", "/etc/passwd", "acme/../globex/x", "acme/", "", "a b"])
def test_names_cannot_leave_the_folder(store: TemplateStore, name: str) -> None:
    with pytest.raises(TemplateError, match="invalid template name"):
        store.get(name)


def test_the_repository_examples_load() -> None:
    store = TemplateStore(REPO_PROMPTS)
    names = sorted(str(p.relative_to(REPO_PROMPTS).with_suffix("")) for p in REPO_PROMPTS.glob("*/*.yaml"))
    assert names == ["acme/it", "acme/legal", "globex/support"]
    modes = {name: store.get(name).cot for name in names}
    assert modes == {"acme/it": "off", "acme/legal": "hidden", "globex/support": "visible"}
    assert all(store.get(name).few_shot and store.get(name).system for name in names)
