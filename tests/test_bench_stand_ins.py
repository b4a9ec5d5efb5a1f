"""The benchmark's stand-ins work as servers: the instant upstream, and the bare relay in front of it.

``make bench`` is not run by CI; these catch a stand-in that no longer starts or relays, and a
benchmark module that no longer imports or whose imports go round in a circle.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtests import floor_relay, instant_upstream
from tests.conftest import LiveServer

BODY = {
    "model": instant_upstream.MODEL,
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 3,
    "stream": True,
}


@pytest.fixture(scope="module")
def relay() -> Iterator[LiveServer]:
    with LiveServer(app=instant_upstream.app, ready_path="/health") as upstream:
        floor_relay.UPSTREAM = httpx.URL(f"http://127.0.0.1:{upstream.port}")
        with LiveServer(app=floor_relay.app, ready_path="/health") as server:
            yield server


def test_the_bare_relay_passes_on_gets_and_streams(relay: LiveServer) -> None:
    assert httpx.get(f"http://127.0.0.1:{relay.port}/health").status_code == 200
    models = httpx.get(f"{relay.base_url}/models").json()
    assert models["data"][0]["id"] == instant_upstream.MODEL
    answer = httpx.post(f"{relay.base_url}/chat/completions", json=BODY)
    events = [line for line in answer.text.splitlines() if line.startswith("data: ")]
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]" and sum('"Hi"' in event for event in events) == 3


def loadtests_imports(path: Path) -> set[str]:
    """The ``loadtests`` modules that ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "loadtests":
            found |= {f"loadtests.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("loadtests."):
            found.add(node.module or "")
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("loadtests.")}
    return found


def test_every_benchmark_module_imports_and_none_is_in_an_import_circle() -> None:
    folder = Path(floor_relay.__file__).parent
    graph = {f"loadtests.{path.stem}": loadtests_imports(path) for path in folder.glob("[!_]*.py")}
    for module in graph:
        importlib.import_module(module)  # as `python -m` would, from the repository root
        reached, todo = set(), list(graph[module])
        while todo:
            current = todo.pop()
            assert current != module, f"{module} imports itself through {sorted(reached)}"
            if current not in reached:
                reached.add(current)
                todo += graph.get(current, ())
