"""Serving (``TemplateStore.resolve``): off the event loop, cached, and falling back to what rendered."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from service import prompts
from service.prompts import TemplateRenderError, TemplateStore
from tests.prompts.attacks import ATTACKS, RENDER_ONLY, SLOW, version
from tests.prompts.conftest import LIMIT, Events, WriteTemplate

VARS = {"tenant": "acme", "department": "it"}
GOOD = 'version: "1"\nsystem: "You help {{ tenant }} on {{ date }}."\n'


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == prompts.__name__ and r.levelno >= logging.ERROR
    ]


async def max_loop_lag(work: Awaitable[Any]) -> tuple[float, Any]:
    """The longest the event loop went without running this task while ``work`` ran, and its result."""
    task = asyncio.ensure_future(work)
    lag = 0.0
    while not task.done():
        before = time.monotonic()
        await asyncio.sleep(0.01)
        lag = max(lag, time.monotonic() - before - 0.01)
    return lag, task.result()


@pytest.mark.parametrize("name", sorted(ATTACKS))
async def test_an_attack_is_refused_and_the_previous_version_keeps_serving(
    bounded: TemplateStore, write: WriteTemplate, events: Events, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    write("acme/it", GOOD)
    first = await bounded.resolve("acme/it", VARS)
    assert first.template.ref == "acme/it@1" and first.system.startswith("You help acme on ")
    write("acme/it", version(ATTACKS[name][0]))
    started = time.monotonic()
    assert await bounded.resolve("acme/it", VARS) == first
    assert time.monotonic() - started < 2 * LIMIT
    [logged] = errors(caplog)
    assert "acme/it@2" in logged
    renders = bounded.renders
    assert await bounded.resolve("acme/it", VARS) == first
    assert bounded.renders == renders, "a version that failed is not rendered again for each request"
    assert events.failed["acme/it"] == 1 and len(errors(caplog)) == 1


@pytest.mark.parametrize("name", sorted(RENDER_ONLY))
async def test_render_only_failures_fall_back(
    bounded: TemplateStore, write: WriteTemplate, name: str
) -> None:
    write("acme/it", version(RENDER_ONLY[name]))
    with pytest.raises(TemplateRenderError, match="acme/it@2 does not render"):
        await bounded.resolve("acme/it", VARS)  # no version ever rendered
    write("acme/it", GOOD)
    good = await bounded.resolve("acme/it", VARS)
    write("acme/it", version(RENDER_ONLY[name], "3"))
    assert await bounded.resolve("acme/it", VARS) == good


async def test_the_rendered_prompt_is_cached(bounded: TemplateStore, write: WriteTemplate) -> None:
    write("acme/it", GOOD)
    first = await asyncio.gather(*(bounded.resolve("acme/it", VARS) for _ in range(5)))
    assert bounded.renders == 1, "concurrent first requests share one render"
    assert await bounded.resolve("acme/it", VARS) is first[0]
    assert bounded.renders == 1
    await bounded.resolve("acme/it", VARS | {"department": "ops"})
    assert bounded.renders == 2, "other variables: another render"
    write("acme/it", GOOD.replace('"1"', '"2"'))
    assert (await bounded.resolve("acme/it", VARS)).template.version == "2"
    assert bounded.renders == 3


async def test_a_version_that_fails_later_falls_back(
    bounded: TemplateStore, write: WriteTemplate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prompts, "_today", lambda: "2026-01-15")
    write("acme/it", version("{% if date > '2026-01-15' %}{{ missing }}{% endif %}Hi {{ date }}", "1"))
    assert (await bounded.resolve("acme/it", VARS)).system == "Hi 2026-01-15"
    monkeypatch.setattr(prompts, "_today", lambda: "2026-01-16")  # now it fails: yesterday's text serves
    assert (await bounded.resolve("acme/it", VARS)).system == "Hi 2026-01-15"
    write("acme/it", version("Hello {{ date }}", "2"))
    assert (await bounded.resolve("acme/it", VARS)).system == "Hello 2026-01-16"
    write("acme/it", version("{{ missing }}", "3"))  # the last good version, rendered for today
    assert (await bounded.resolve("acme/it", VARS)).system == "Hello 2026-01-16"


async def test_the_trial_render_uses_each_departments_own_variables(
    bounded: TemplateStore, write: WriteTemplate
) -> None:
    with_company = VARS | {"company": "ACME Corp"}
    write("acme/it", version("Hello {{ tenant }}", "1"))
    await bounded.resolve("acme/it", with_company)
    await bounded.resolve("acme/it", VARS)
    write("acme/it", version("Hello {{ company }}", "2"))
    assert (await bounded.resolve("acme/it", with_company)).system == "Hello ACME Corp"
    assert (await bounded.resolve("acme/it", VARS)).system == "Hello acme"


async def test_loading_and_rendering_leave_the_event_loop_free(
    bounded: TemplateStore, write: WriteTemplate
) -> None:
    write("acme/it", GOOD)
    await bounded.resolve("acme/it", VARS)
    write("acme/it", version(SLOW))  # renders for the whole time limit, then is refused
    lag, served = await max_loop_lag(bounded.resolve("acme/it", VARS))
    assert served.template.version == "1"
    assert lag < 0.2, f"the event loop stalled for {lag:.2f} s"


async def test_without_a_good_version_the_load_error_is_raised(bounded: TemplateStore) -> None:
    with pytest.raises(prompts.TemplateError, match="no such template file") as caught:
        await bounded.resolve("acme/it", VARS)
    assert not isinstance(caught.value, TemplateRenderError)


async def test_a_render_that_escapes_its_limits_is_not_waited_for(
    prompts_root: Path, write: WriteTemplate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backstop: a C call the sandbox failed to bound would hold a thread, not the requests."""
    store = TemplateStore(prompts_root, render_timeout=0.1)  # backstop: 2 * 0.1 + 1 = 1.2 s
    write("acme/it", GOOD)
    first = await store.resolve("acme/it", VARS)
    unbounded = prompts.prompt_sandbox.render

    def stuck(*args: Any, **kwargs: Any) -> str:
        time.sleep(1.6)  # ignores the deadline
        return unbounded(*args, **kwargs)

    monkeypatch.setattr(prompts.prompt_sandbox, "render", stuck)
    write("acme/it", GOOD.replace('"1"', '"2"'))
    started = time.monotonic()
    assert await store.resolve("acme/it", VARS) == first
    assert 1.2 <= time.monotonic() - started < 1.5
    assert await store.resolve("acme/it", VARS) == first  # at once: not waiting again
    assert time.monotonic() - started < 1.5
    await asyncio.sleep(0.6)  # the render ended after all: that version serves now
    assert (await store.resolve("acme/it", VARS)).template.version == "2"


async def test_files_are_read_and_compiled_off_the_event_loop(
    bounded: TemplateStore, write: WriteTemplate, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = []
    load = bounded._load

    def recording(*args: Any) -> Any:
        threads.append(threading.current_thread())
        return load(*args)

    monkeypatch.setattr(bounded, "_load", recording)
    write("acme/it", GOOD)
    await bounded.resolve("acme/it", VARS)
    assert threads and threading.current_thread() not in threads
