"""Aliases in an s3:// registry: every gateway sees a promote, and concurrent promotes all land."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from service.registry import AdapterRejected, Registry
from service.registry_store import split_ref
from service.registry_store_s3 import ALIAS_TTL

from ..conftest import TINY_MODEL
from .conftest import OpenRegistry


def test_a_promote_and_a_rollback_are_seen_by_another_gateways_next_resolve(
    open_registry: OpenRegistry, adapter_dirs: list[Path]
) -> None:
    gateway_a, gateway_b = open_registry("a"), open_registry("b", ttl=0)
    gateway_a.publish(adapter_dirs[0], name="helpdesk", level="L2")
    gateway_a.publish(adapter_dirs[1], name="helpdesk", level="L3")
    with pytest.raises(AdapterRejected, match="no adapter alias"):
        gateway_b.resolve("it")
    gateway_a.promote("it", "helpdesk@1")
    assert gateway_b.resolve("it").ref == "helpdesk@1"
    gateway_a.promote("it", "helpdesk@2")
    assert gateway_b.resolve("it").ref == "helpdesk@2"
    assert gateway_b.history("it") == ["helpdesk@1"]
    assert gateway_a.rollback("it") == "helpdesk@1"
    assert gateway_b.resolve("it").ref == "helpdesk@1"
    with pytest.raises(AdapterRejected, match="no earlier version"):
        gateway_b.rollback("it")
    assert gateway_a.resolve("it").ref == "helpdesk@1"  # its own writes at once, whatever its TTL


def test_with_the_default_ttl_a_promote_is_seen_within_a_second(
    open_registry: OpenRegistry, adapter_dirs: list[Path]
) -> None:
    gateway_a, gateway_b = open_registry("a"), open_registry("b")
    gateway_a.publish(adapter_dirs[0], name="helpdesk", level="L2")
    gateway_a.publish(adapter_dirs[1], name="helpdesk", level="L3")
    gateway_a.promote("it", "helpdesk@1")
    assert gateway_b.resolve("it").ref == "helpdesk@1"
    gateway_a.promote("it", "helpdesk@2")
    promoted = time.monotonic()
    while gateway_b.resolve("it").ref != "helpdesk@2":
        assert time.monotonic() - promoted < ALIAS_TTL + 0.5, "not seen within the TTL"
        time.sleep(0.02)


def test_an_unchanged_aliases_object_is_not_downloaded_again(
    open_registry: OpenRegistry, adapter_dirs: list[Path]
) -> None:
    gateway_a, gateway_b = open_registry("a"), open_registry("b", ttl=0)
    gateway_a.publish(adapter_dirs[0], name="helpdesk", level="L2")
    gateway_a.promote("it", "helpdesk@1")
    answers: list[str] = []
    real = gateway_b.store.client.get_object  # type: ignore[attr-defined]

    def recorded(**params: Any) -> Any:
        try:
            answer = real(**params)
        except Exception as exc:
            answers.append(str(getattr(exc, "response", {}).get("Error", {}).get("Code")))
            raise
        answers.append("200")
        return answer

    gateway_b.store.client.get_object = recorded  # type: ignore[attr-defined]
    for _ in range(3):
        assert gateway_b.resolve("it").ref == "helpdesk@1"
    assert answers[0] == "200" and answers[-2:] == ["304", "304"]  # conditional GETs: no body


@pytest.mark.parametrize("where", ["s3", "folder"])
def test_concurrent_promotes_through_two_gateways_lose_no_update(
    where: str, open_registry: OpenRegistry, adapter_dirs: list[Path], tmp_path: Path, tiny_model_dir: Path
) -> None:
    if where == "s3":
        gateways = [open_registry("a"), open_registry("b")]
    else:
        gateways = [
            Registry(tmp_path / "registry", TINY_MODEL, base_aliases=(str(tiny_model_dir),)) for _ in "ab"
        ]
    refs = [gateways[0].publish(adapter_dirs[0], name="helpdesk", level="L2").ref for _ in range(8)]
    for gateway in gateways:
        for ref in refs:
            gateway.load(*split_ref(ref))  # synced first: the race below is about the aliases only
    start = threading.Barrier(len(refs))
    failures: list[BaseException] = []

    def promote(i: int) -> None:
        try:
            start.wait()
            gateways[i % 2].promote("it", refs[i])  # one alias, eight targets at once
            gateways[i % 2].promote(f"dept-{i}", refs[i])  # and eight aliases of their own
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(len(refs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures
    reader = open_registry("c", ttl=0) if where == "s3" else gateways[1]
    aliases = reader.aliases()
    assert {f"dept-{i}": refs[i] for i in range(len(refs))}.items() <= aliases.items()
    assert sorted([*reader.history("it"), aliases["it"]]) == sorted(refs)  # each promote is in the history
