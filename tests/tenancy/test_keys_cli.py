"""``loragate keys create|revoke|list``: a key printed once, ids only afterwards, settings read like serve."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import SecretStr

from service import cli
from service.errors import AuthenticationError
from service.keys import KeyStore
from service.tenancy import Tenancy, TenantDirectory

from .helpers import BASE, TENANTS_YAML, write


def run(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A settings file naming the tenants and keys files, as `serve --config` would read it."""
    tenants = write(tmp_path / "tenants.yaml", TENANTS_YAML)
    keys = tmp_path / "state" / "keys.json"
    return write(
        tmp_path / "loragate.yaml", f"tenants_file: {tenants}\nkeys_file: {keys}\nmodel_name: {BASE}\n"
    )


def created(out: str) -> tuple[str, str]:
    key_id = re.search(r"\b(key_[0-9a-f]{8})\b", out)
    key = re.search(r"^\s+(lg-\S+)$", out, re.MULTILINE)
    assert key_id and key, out
    return key_id.group(1), key.group(1)


def test_create_list_revoke(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["keys", "create", "--config", str(config), "--tenant", "acme", "--department", "hr"], capsys
    )
    assert code == 0, err
    key_id, key = created(out)
    assert out.count(key) == 1 and "only this once" in out

    keys_file = tmp_path / "state" / "keys.json"
    assert (
        key not in keys_file.read_text() and hashlib.sha256(key.encode()).hexdigest() in keys_file.read_text()
    )
    directory = TenantDirectory(tmp_path / "tenants.yaml", BASE)
    tenancy = Tenancy(directory, KeyStore(keys_file, directory), BASE, SecretStr("sk-unused-0123456789abc"))
    who = tenancy.authenticate(f"Bearer {key}")
    assert (who.key_id, who.tenant.name, who.pinned_department) == (key_id, "acme", "hr")

    code, out, _ = run(["keys", "list", "--config", str(config)], capsys)
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["ID", "TENANT", "DEPARTMENT", "CREATED", "STATUS"]
    assert row.split()[:3] == [key_id, "acme", "hr"] and row.split()[-1] == "active"
    assert key not in out and hashlib.sha256(key.encode()).hexdigest() not in out

    code, out, _ = run(["keys", "revoke", "--config", str(config), key_id], capsys)
    assert code == 0 and key_id in out
    assert run(["keys", "list", "--config", str(config)], capsys)[1].splitlines()[1].split()[-1] == "revoked"
    with pytest.raises(AuthenticationError, match="Incorrect API key"):
        tenancy.authenticate(f"Bearer {key}")  # the running gateway's store sees the revocation


@pytest.mark.parametrize(
    ("argv", "code", "named"),
    [
        (["create", "--tenant", "initech"], 1, "no tenant 'initech'"),
        (["create", "--tenant", "acme", "--department", "legal"], 1, "no department 'legal'"),
        (["revoke", "key_00000000"], 1, "no API key with id 'key_00000000'"),
        (["create"], 2, "--tenant"),
        ([], 2, "create"),
    ],
)
def test_errors(
    config: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, named: str
) -> None:
    options = ["--config", str(config)] if argv else []
    result, out, err = run(["keys", *argv, *options], capsys)
    assert result == code and named in err and "Traceback" not in err
    assert "lg-" not in out


def test_a_broken_tenants_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tenants = write(tmp_path / "tenants.yaml", "tenants: [\n")
    code, _, err = run(
        ["keys", "list", "--tenants-file", str(tenants), "--keys-file", str(tmp_path / "k")], capsys
    )
    assert code == 2 and str(tenants) in err


def test_environment_and_single_tenant_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LORAGATE_KEYS_FILE", str(tmp_path / "env-keys.json"))
    assert run(["keys", "list"], capsys)[1].startswith("No API keys in")
    code, out, err = run(["keys", "create", "--tenant", "default"], capsys)  # no tenants file: single-tenant
    assert code == 0, err
    key_id, key = created(out)
    assert key_id in (tmp_path / "env-keys.json").read_text()
    assert run(["keys", "create", "--tenant", "acme"], capsys)[0] == 1
    assert key_id in run(["keys", "list"], capsys)[1]
