"""The ``loragate`` command: options, precedence, and clean failures."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from service import cli
from service.config import Settings


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LORAGATE_")}
    return env | extra


def loragate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs the installed console script (or the module, where the script is missing)."""
    script = Path(sys.executable).with_name("loragate")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=30, env=clean_env(**env))


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Replaces the server with a recorder of the settings it would have run with."""
    calls: list[Settings] = []
    monkeypatch.setattr(cli, "serve", calls.append)
    return calls


def run_main(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_serve_help_lists_every_setting_but_the_keys() -> None:
    result = loragate("serve", "--help")
    assert result.returncode == 0, result.stderr
    for name in Settings.model_fields:
        option = "--" + name.replace("_", "-")
        if name in ("api_key", "admin_api_key"):  # secrets: environment or settings file only
            assert option not in result.stdout
        else:
            assert option in result.stdout
    assert "--config" in result.stdout
    assert "LORAGATE_MAX_REQUEST_BYTES" in result.stdout.replace("\n", "").replace(" ", "")


def test_invalid_settings_exit_2_from_the_console_script() -> None:
    result = loragate("serve", "--port", "70000")
    assert result.returncode == 2
    assert result.stderr.startswith("loragate: invalid settings:") and "port" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["serve", "--port", "eighty"], "port"),
        (["serve", "--max-n", "0"], "max_n"),
        (["serve", "--max-request-bytes", "12"], "max_request_bytes"),
        (["serve", "--environment", "production"], "LORAGATE_API_KEY"),
        (["serve", "--log-level", "loud"], "--log-level"),
        (["serve", "--dtype", "float8"], "--dtype"),
        (["serve", "--api-key", "sk-on-the-command-line"], "--api-key"),
        (["serve", "--no-such-option"], "--no-such-option"),
    ],
)
def test_invalid_settings_exit_2(
    argv: list[str], mentions: str, served: list[Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_main(argv, capsys)
    assert code == 2
    assert mentions in err
    assert "Traceback" not in err
    assert served == []


def test_weak_production_key_is_refused_without_echo(
    monkeypatch: pytest.MonkeyPatch, served: list[Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LORAGATE_API_KEY", "weak-Key-42")
    code, err = run_main(["serve", "--environment", "production"], capsys)
    assert code == 2 and "weak-Key-42" not in err and served == []


def test_invalid_yaml_setting_exits_2(
    tmp_path: Path, served: list[Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("max_batch_size: 0\nmystery: 1\n")
    code, err = run_main(["serve", "--config", str(config)], capsys)
    assert code == 2
    assert "max_batch_size" in err and "mystery" in err


def test_command_line_beats_env_beats_yaml(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    served: list[Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "loragate.yaml"
    config.write_text("port: 9001\nmax_n: 2\nmodel_name: from-yaml\ndtype: float16\n")
    monkeypatch.setenv("LORAGATE_MAX_N", "3")
    monkeypatch.setenv("LORAGATE_MODEL_NAME", "from-env")
    monkeypatch.setenv("LORAGATE_API_KEY", "sk-from-env")
    code, _ = run_main(
        ["serve", "--config", str(config), "--model-name", "from-cli", "--threads", "2"], capsys
    )
    assert code == 0
    (settings,) = served
    assert (settings.port, settings.dtype) == (9001, "float16")  # YAML
    assert settings.max_n == 3  # env
    assert (settings.model_name, settings.threads) == ("from-cli", 2)  # command line
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "sk-from-env"
    assert settings.host == "127.0.0.1"  # default


def test_config_file_from_the_environment(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    served: list[Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "loragate.yaml"
    config.write_text("port: 9002\n")
    monkeypatch.setenv("LORAGATE_CONFIG", str(config))
    assert run_main(["serve"], capsys)[0] == 0
    assert served[0].port == 9002


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main([], capsys)
    assert code == 2 and "serve" in err


def test_vllm_options_parse_to_settings() -> None:
    args = cli.build_parser().parse_args(
        ["serve", "--engine", "vllm", "--upstream", "http://a:8001", "http://b:8001", "--affinity-slack", "2"]
    )
    settings = cli._settings(args)
    assert settings.engine == "vllm" and settings.upstream == ["http://a:8001", "http://b:8001"]
    assert settings.affinity_slack == 2 and settings.spawn is False
    spawn = cli._settings(cli.build_parser().parse_args(["serve", "--engine", "vllm", "--spawn"]))
    assert spawn.spawn is True and spawn.upstream == []


def test_the_gateway_never_imports_the_adapter_factory() -> None:
    """``serve`` (all but ``train``) must start without adapters/ and TRL: they load for ``train`` only."""
    check = (
        "import sys; from service import cli; cli.serve = lambda settings: None; "
        "assert cli.main(['serve']) == 0; "
        "print(sorted(m for m in sys.modules if m.partition('.')[0] in ('adapters', 'trl')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        cwd=Path(__file__).parents[1],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_train_is_listed_and_its_help_is_complete() -> None:
    listing = loragate("--help")
    assert listing.returncode == 0, listing.stderr
    assert cli.TRAIN_HELP in " ".join(listing.stdout.split())  # the line argparse wrapped
    train = loragate("train", "--help")
    assert train.returncode == 0, train.stderr
    for step in ("sft", "reward", "rl", "dpo", "rlaif", "eval", "publish", "chain", "fields", "summary"):
        assert step in train.stdout
    assert "--recipe" in loragate("train", "sft", "--help").stdout
