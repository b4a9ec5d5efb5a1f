"""The key store: hashes only on disk, look-up by hash, revocation, changes seen across processes."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import stat
from dataclasses import fields
from pathlib import Path

import pytest

from service.errors import NotFoundError
from service.keys import KeyRecord, KeyStore, KeyStoreError
from service.tenancy import TenantDirectory

from .helpers import write


def test_create_and_lookup(store: KeyStore) -> None:
    key_id, key = store.create("acme", "hr")
    assert re.fullmatch(r"key_[0-9a-f]{8}", key_id)
    assert key.startswith("lg-") and len(key.removeprefix("lg-")) >= 32
    record = store.lookup(key)
    assert record is not None
    assert (record.key_id, record.tenant, record.department, record.revoked) == (key_id, "acme", "hr", False)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record.created)
    other_id, other = store.create("globex")
    assert other_id != key_id and other != key
    found = store.lookup(other)
    assert found is not None and (found.tenant, found.department) == ("globex", None)


def test_only_hashes_reach_the_disk(store: KeyStore) -> None:
    keys = [store.create("acme")[1], store.create("globex", "legal")[1]]
    text = store.path.read_text()
    for key in keys:
        assert key not in text and key.removeprefix("lg-") not in text
        assert hashlib.sha256(key.encode()).hexdigest() in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert [p.name for p in store.path.parent.iterdir() if p.suffix == ".tmp"] == []  # no temp file left


def _flip(key: str, at: int) -> str:
    return key[:at] + ("A" if key[at] != "A" else "B") + key[at + 1 :]


@pytest.mark.parametrize("at", [0, 3, 20, -1], ids=["first", "after-prefix", "middle", "last"])
def test_wrong_keys_of_equal_length_are_refused(store: KeyStore, at: int) -> None:
    _, key = store.create("acme")
    wrong = _flip(key, at if at >= 0 else len(key) - 1)
    assert len(wrong) == len(key) and wrong != key
    assert store.lookup(wrong) is None
    assert store.lookup(key) is not None


@pytest.mark.parametrize("wrong", ["", "lg-", "x" * 200, "sk-bootstrap-0123456789abcdef"])
def test_other_wrong_keys_are_refused(store: KeyStore, wrong: str) -> None:
    store.create("acme")
    assert store.lookup(wrong) is None


def test_revoke(store: KeyStore) -> None:
    key_id, key = store.create("acme", "it")
    kept_id, kept = store.create("acme", "it")
    revoked = store.revoke(key_id)
    assert revoked.revoked and revoked.key_id == key_id
    assert store.lookup(key) is None
    assert store.lookup(kept) is not None
    assert store.revoke(key_id).revoked  # twice is harmless
    assert {(r.key_id, r.revoked) for r in store.list()} == {(key_id, True), (kept_id, False)}


def test_revoking_an_unknown_id_is_a_clear_error(store: KeyStore) -> None:
    _, key = store.create("acme")
    with pytest.raises(NotFoundError, match="no API key with id 'key_nothere'"):
        store.revoke("key_nothere")
    assert store.lookup(key) is not None


def test_list_holds_no_keys_or_hashes(store: KeyStore) -> None:
    created = [store.create("acme"), store.create("globex", "hr"), store.create("acme", "finance")]
    records = store.list()
    assert {r.key_id for r in records} == {i for i, _ in created} and len(records) == 3
    assert records == sorted(records, key=lambda r: (r.created, r.key_id))  # oldest first
    assert {(r.tenant, r.department) for r in records} == {
        ("acme", None),
        ("globex", "hr"),
        ("acme", "finance"),
    }
    assert [f.name for f in fields(KeyRecord)] == [
        "key_id",
        "tenant",
        "department",
        "created",
        "revoked",
        "limits",
    ]
    text = repr(records)
    for _, key in created:
        assert key not in text and hashlib.sha256(key.encode()).hexdigest() not in text


@pytest.mark.parametrize(("tenant", "department"), [("initech", None), ("acme", "legal"), ("globex", "it")])
def test_create_refuses_what_the_tenants_file_lacks(
    store: KeyStore, tenant: str, department: str | None
) -> None:
    with pytest.raises(NotFoundError):
        store.create(tenant, department)
    assert not store.path.exists()


def test_two_stores_on_one_file_see_each_others_changes(tmp_path: Path, directory: TenantDirectory) -> None:
    path = tmp_path / "shared" / "keys.json"
    server, cli = KeyStore(path, directory), KeyStore(path, directory)
    key_id, key = cli.create("acme", "it")
    found = server.lookup(key)
    assert found is not None and found.key_id == key_id
    server.revoke(key_id)
    assert cli.lookup(key) is None
    _, second = cli.create("globex")
    assert server.lookup(second) is not None and len(server.list()) == 2


def test_a_broken_keys_file_keeps_the_previous_keys(
    store: KeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    _, key = store.create("acme")
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert store.lookup(key) is not None
    write(store.path, store.path.read_text().replace('"keys"', '"kees"'))
    assert store.lookup(key) is not None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(store.path) in errors[0]
    assert key not in caplog.text and digest not in caplog.text
    with pytest.raises(KeyStoreError, match="not a valid keys file"):
        store.create("acme")  # a broken file is never overwritten
    assert '"kees"' in store.path.read_text()


def test_a_broken_keys_file_is_refused_at_start(tmp_path: Path, directory: TenantDirectory) -> None:
    path = write(tmp_path / "keys.json", json.dumps({"keys": [{"id": "key_1", "tenant": "acme"}]}))
    with pytest.raises(KeyStoreError) as caught:
        KeyStore(path, directory)
    assert str(path) in str(caught.value)


def test_a_key_among_thousands_is_found_with_its_own_record(store: KeyStore) -> None:
    """Lookup is by hash, not a scan: every key of a large file still maps to its own record."""
    keys = {f"lg-{i:064x}": f"key_{i:08x}" for i in range(5000)}
    items = [
        {"id": key_id, "sha256": hashlib.sha256(key.encode()).hexdigest(), "tenant": "acme",
         "department": None, "created": "2026-01-01T00:00:00Z", "revoked": key_id.endswith("7")}
        for key, key_id in keys.items()
    ]  # fmt: skip
    store.path.write_text(json.dumps({"keys": items}))
    for key in ("lg-" + "0" * 64, f"lg-{4998:064x}", f"lg-{2345:064x}"):
        record = store.lookup(key)
        assert record is not None and record.key_id == keys[key] and not record.revoked
    assert store.lookup(f"lg-{7:064x}") is None  # revoked
    assert store.lookup(f"lg-{5000:064x}") is None  # not in the file
