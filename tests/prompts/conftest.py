"""Fixtures for the L1 template tests: a prompts folder in a tmp dir and stores over it."""

from __future__ import annotations

import os
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from service.prompts import TemplateStore

WriteTemplate = Callable[[str, str], Path]
LIMIT = 0.5  # seconds: the render time limit of the `bounded` store (and of test_gateway's)

VALID = """\
    version: "1"
    system: "You help {{ tenant }}."
    """


@pytest.fixture
def prompts_root(tmp_path: Path) -> Path:
    return tmp_path / "prompts"


@pytest.fixture
def store(prompts_root: Path) -> TemplateStore:
    return TemplateStore(prompts_root)


@pytest.fixture
def write(prompts_root: Path) -> WriteTemplate:
    """Write ``prompts/<name>.yaml`` (dedented) and move its mtime one second forward each time,

    so that a rewrite is always seen as a change, even within the file system's mtime resolution.
    """
    clock = [1_700_000_000]

    def write_template(name: str, text: str) -> Path:
        path = prompts_root / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        clock[0] += 1
        os.utime(path, (clock[0], clock[0]))
        return path

    return write_template


class Events:
    """A TemplateEvents that counts, per template name."""

    def __init__(self) -> None:
        self.loaded: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    def template_loaded(self, name: str) -> None:
        self.loaded[name] += 1

    def template_failed(self, name: str) -> None:
        self.failed[name] += 1


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def bounded(prompts_root: Path, events: Events) -> TemplateStore:
    """A store with a short render time limit (0.5 s), reporting to ``events``."""
    return TemplateStore(prompts_root, events, render_timeout=LIMIT)
