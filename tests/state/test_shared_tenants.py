"""The tenants document in the shared database, and ``loragate state import``, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import psycopg
import pytest

from service.cli import main
from service.keys import KeyStore
from service.shared_state import SharedState
from service.tenancy import TenantDirectory, TenantsFileError

from .conftest import BASE, TENANTS

Pair = tuple[SharedState, SharedState]
INITECH = TENANTS + "  initech:\n    departments:\n      tps: {}\n"


def test_an_empty_database_is_single_tenant(state_url: str) -> None:
    state = SharedState(state_url, BASE, watch=False)
    try:
        assert [t.name for t in state.tenants.all()] == ["default"] and state.tenants.version is None
        with pytest.raises(TenantsFileError, match="no tenants document is stored yet"):
            state.tenants.document()
    finally:
        state.close()


def test_a_new_version_reaches_the_other_gateway(gateways: Pair) -> None:
    first, second = gateways
    before, after = first.tenants.replace(INITECH, "admin:test")
    assert [t.name for t in before] == ["acme", "globex"]
    assert [t.name for t in after] == ["acme", "globex", "initech"] and first.tenants.version == 2
    assert second.tenants.get("initech") is None
    second.refresh()
    assert second.tenants.get("initech") is not None and second.tenants.document() == INITECH
    assert "version 2" in second.tenants.source


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tenants: [", "not valid YAML"),
        ("tenants: {acme: {departments: {}}}", "tenants.acme.departments"),
        ("tenants:\n  acme:\n    departments: {it: {adapter: base-model}}\n", "may not be the base model"),
    ],
)
def test_a_bad_document_is_refused_and_nothing_is_stored(gateways: Pair, text: str, problem: str) -> None:
    first, second = gateways
    with pytest.raises(TenantsFileError, match=problem):
        first.tenants.replace(text, "admin:test")
    assert first.db.tenants() is not None and first.db.tenants().version == 1  # type: ignore[union-attr]
    second.refresh()
    assert [t.name for t in second.tenants.all()] == ["acme", "globex"]


def test_a_version_this_gateway_cannot_use_keeps_the_previous(
    state_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Gateways serving another base model: an alias named as this one's base is refused here only."""
    other = SharedState(state_url, "other-base", watch=False)
    here = SharedState(state_url, BASE, watch=False)
    try:
        other.tenants.replace(TENANTS, "admin:test")
        here.refresh()
        clash = TENANTS.replace("adapter: acme-it", f"adapter: {BASE}")
        other.tenants.replace(clash, "admin:test")  # fine for the other base model
        with caplog.at_level(logging.ERROR):
            here.refresh()
        assert "tenants version 2" in caplog.text and "previous tenants stay in force" in caplog.text
        assert here.tenants.get("acme").departments["it"].adapter == "acme-it"  # type: ignore[union-attr]
    finally:
        other.close()
        here.close()


def test_import_copies_the_files_once(
    tmp_path: Path, state_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tenants_file, keys_file = tmp_path / "tenants.yaml", tmp_path / "keys.json"
    tenants_file.write_text(TENANTS)
    store = KeyStore(keys_file, TenantDirectory(tenants_file, BASE))
    kept, key = store.create("acme", "it")
    revoked, old = store.create("globex")
    store.revoke(revoked)
    argv = ["state", "import", "--state-url", state_url, "--keys-file", str(keys_file),
            "--tenants-file", str(tenants_file), "--model-name", BASE,
            "--ledger-url", f"sqlite:///{tmp_path / 'usage.db'}"]  # fmt: skip
    assert main(argv) == 0
    assert "2 of 2" in capsys.readouterr().out

    state = SharedState(state_url, BASE, watch=False)
    try:
        assert state.tenants.version == 1 and state.tenants.document() == TENANTS
        assert state.keys.lookup(key) is not None and state.keys.lookup(key).key_id == kept  # type: ignore[union-attr]
        assert state.keys.lookup(old) is None  # revoked stays revoked
        with psycopg.connect(state_url) as db:
            hashes = {row[0]: row[1] for row in db.execute("SELECT id, sha256 FROM api_keys")}
        on_disk = {item["id"]: item["sha256"] for item in json.loads(keys_file.read_text())["keys"]}
        assert hashes == on_disk  # the same hashes: the keys people hold keep working
    finally:
        state.close()

    tenants_file.write_text(INITECH)
    assert main(argv) == 0  # again: nothing new, the stored tenants document left as it is
    out = capsys.readouterr().out
    assert "0 of 2" in out and "version 1 is stored" in out
    assert main(["state", "show", "--state-url", state_url]) == 0
    assert "tenants: version 1 (by cli:" in capsys.readouterr().out


def test_import_refuses_a_broken_tenants_file_before_writing(
    tmp_path: Path, state_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tenants.yaml").write_text("tenants: [")
    argv = ["state", "import", "--state-url", state_url, "--keys-file", str(tmp_path / "keys.json"),
            "--tenants-file", str(tmp_path / "tenants.yaml")]  # fmt: skip
    assert main(argv) == 2
    assert "not valid YAML" in capsys.readouterr().err
    with psycopg.connect(state_url) as db:
        assert db.execute("SELECT COUNT(*) FROM tenant_documents").fetchone() == (0,)
    assert main(["state", "import", "--keys-file", "k.json"]) == 2  # no state_url at all
    assert "LORAGATE_STATE_URL" in capsys.readouterr().err


def test_the_keys_command_writes_the_database(
    gateways: Pair, state_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import build_parser

    build_parser(["keys"]).parse_args(["keys", "list", "--state-url", state_url])  # the option exists
    first, _ = gateways
    ledger = ["--ledger-url", f"sqlite:///{tmp_path / 'usage.db'}"]
    assert main(["keys", "create", "--tenant", "acme", "--state-url", state_url, *ledger]) == 0
    key = capsys.readouterr().out.split()[-1]
    assert asyncio.run(first.keys.find(key)) is not None  # in the database, not in a keys file
    assert main(["keys", "list", "--state-url", state_url]) == 0
    assert "acme" in capsys.readouterr().out
