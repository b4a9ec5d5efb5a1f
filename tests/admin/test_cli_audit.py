"""``loragate keys`` and ``loragate adapters`` run the admin API's operations and write the same audit log."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from service import cli
from service.admin.audit import cli_actor

from .conftest import Admin


def run(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(admin_world: Admin, tiny_model_dir: Path) -> list[str]:
    """The gateway's own files, as `loragate serve --config` would name them; the ledger on the command line
    (the tests' environment names another)."""
    s = admin_world.settings
    path = admin_world.root / "cli.yaml"
    path.write_text(
        f"tenants_file: {s.tenants_file}\nkeys_file: {s.keys_file}\nregistry_dir: {s.registry_dir}\n"
        f"model_name: {s.model_name}\nmodel_path: {tiny_model_dir}\n"
    )
    return ["--config", str(path), "--ledger-url", admin_world.ledger_url]


def test_keys(admin_world: Admin, config: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["keys", "create", *config, "--tenant", "globex", "--limit", "tokens_per_day=5000"], capsys
    )
    assert code == 0 and err == "", err
    key = out.split()[-1]
    assert admin_world.chat(key).status_code == 200  # the running gateway sees it at once
    created = admin_world.audit(action="keys.create", actor=cli_actor())[-1]
    key_id = created["target"]
    assert key_id in out and created["after"]["limits"] == {"tokens_per_day": 5000}
    listed = admin_world.admin.get("/admin/v1/keys").json()["data"]
    assert next(k for k in listed if k["id"] == key_id)["limits"] == {"tokens_per_day": 5000}

    assert run(["keys", "revoke", *config, key_id], capsys)[0] == 0
    revoke = admin_world.audit(action="keys.revoke", actor=cli_actor())[-1]
    assert (revoke["target"], revoke["after"]["revoked"]) == (key_id, True)
    assert admin_world.chat(key).status_code == 401

    code, out, err = run(["keys", "create", *config, "--tenant", "globex", "--limit", "per_hour=5"], capsys)
    assert code == 2 and "per_hour" in err and "lg-" not in out


def test_adapters(admin_world: Admin, config: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    key = admin_world.tenant_keys["acme"]
    code, out, err = run(["adapters", "promote", "acme-it", "acme-it-lora@2", *config], capsys)
    assert code == 0 and out.strip() == "acme-it -> acme-it-lora@2", err
    assert admin_world.chat(key, "it").headers["x-loragate-adapter"] == "acme-it-lora@2"
    code, out, _ = run(["adapters", "rollback", "acme-it", *config], capsys)
    assert code == 0 and out.strip() == "acme-it -> acme-it-lora@1"
    assert admin_world.chat(key, "it").headers["x-loragate-adapter"] == "acme-it-lora@1"
    entries = admin_world.audit(actor=cli_actor())
    actions = [(e["action"], e["after"]["current"]) for e in entries if e["action"].startswith("adapters.")]
    assert actions[-2:] == [("adapters.promote", "acme-it-lora@2"), ("adapters.rollback", "acme-it-lora@1")]

    code, out, err = run(["adapters", "promote", "acme-it", "acme-it-lora@9", *config], capsys)
    assert code == 1 and "acme-it-lora@9" in err and out == ""
    code, out, err = run(["adapters", "list", "--config", config[1]], capsys)
    assert code == 0 and "acme-it-lora@1" in out


def test_an_unreachable_ledger_warns(
    admin_world: Admin, config: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    options = [*config[:2], "--ledger-url", f"sqlite:///{blocker}/usage.db"]  # under a file: cannot open
    code, out, err = run(["keys", "create", *options, "--tenant", "globex"], capsys)
    assert code == 0 and "lg-" in out  # done: the key exists
    assert "warning: done, but not in the audit log" in err and "lg-" not in err
