"""Settings: precedence, validation, and the production key policy."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import MIN_PRODUCTION_KEY_LENGTH, Settings, SettingsError, load_settings

STRONG_KEY = "sk-prod-" + "k" * 32


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No LORAGATE_* variable of the machine running the tests leaks in."""
    for name in list(os.environ):
        if name.upper().startswith("LORAGATE_"):
            monkeypatch.delenv(name)
    yield


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "loragate.yaml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert (settings.environment, settings.host, settings.port, settings.api_key) == (
        "development",
        "127.0.0.1",
        8000,
        None,
    )
    assert settings.resolved_model_path == Path("data/models/smollm2-135m-instruct")


def test_precedence_defaults_yaml_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_yaml(tmp_path, "port: 9001\nmax_n: 3\nmodel_name: from-yaml\nlog_level: debug\n")
    monkeypatch.setenv("LORAGATE_MAX_N", "4")
    monkeypatch.setenv("LORAGATE_MODEL_NAME", "from-env")
    settings = load_settings(config, model_name="from-override", max_batch_size=None)
    assert settings.default_max_tokens == 512  # default
    assert (settings.port, settings.log_level) == (9001, "debug")  # YAML over defaults
    assert settings.max_n == 4  # env over YAML
    assert settings.model_name == "from-override"  # explicit over env
    assert settings.max_batch_size == 32  # an override of None means "not given"


def test_env_values_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAGATE_PORT", "8123")
    monkeypatch.setenv("LORAGATE_MODEL_PATH", "/models/x")
    monkeypatch.setenv("LORAGATE_API_KEY", "sk-from-env")
    monkeypatch.setenv("LORAGATE_LOG_LEVEL", "WARNING")
    settings = load_settings()
    assert (settings.port, settings.log_level) == (8123, "warning")
    assert settings.model_path == Path("/models/x") == settings.resolved_model_path
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "sk-from-env"
    assert "sk-from-env" not in repr(settings)


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "named"),
    [
        ("port: [1, 2]\n", {}, "port"),
        ("unknown_setting: 1\n", {}, "unknown_setting"),
        ("", {"max_n": 0}, "max_n"),
        ("", {"dtype": "float8"}, "dtype"),
        ("", {"max_request_bytes": 10}, "max_request_bytes"),
        ("", {"port": 70000}, "port"),
        ("", {"threads": 0}, "threads"),
        ("log_level: loud\n", {}, "log_level"),
    ],
)
def test_invalid_values_name_the_setting(tmp_path: Path, yaml_text: str, overrides: dict, named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(write_yaml(tmp_path, yaml_text), **overrides)


def test_yaml_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mapping"):
        load_settings(write_yaml(tmp_path, "- just\n- a list\n"))


def test_an_empty_yaml_file_is_fine(tmp_path: Path) -> None:
    assert load_settings(write_yaml(tmp_path, "")).port == 8000


WEAK_KEYS = [
    pytest.param(None, id="missing"),
    pytest.param("", id="empty"),
    pytest.param("changeme", id="default"),
    pytest.param("CHANGEME", id="default-upper"),
    pytest.param("sk-short-Q7", id="short"),
    pytest.param("q" * (MIN_PRODUCTION_KEY_LENGTH - 1), id="one-short"),
]


@pytest.mark.parametrize("key", WEAK_KEYS)
@pytest.mark.parametrize("via", ["override", "env"])
def test_production_refuses_weak_keys(key: str | None, via: str, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides: dict[str, object] = {"environment": "production"}
    if key is not None and via == "env":
        monkeypatch.setenv("LORAGATE_API_KEY", key)
    elif key is not None:
        overrides["api_key"] = key
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    assert "LORAGATE_API_KEY" in str(caught.value)
    if key:
        assert key not in str(caught.value) and key.lower() not in str(caught.value).lower()


def test_production_error_never_echoes_a_key_next_to_other_errors() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environment="production", api_key="tiny-secret-Zx9", port="not-a-port")
    assert "tiny-secret-Zx9" not in str(caught.value) and "port" in str(caught.value)


def test_production_accepts_a_strong_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAGATE_ENVIRONMENT", "production")
    monkeypatch.setenv("LORAGATE_API_KEY", STRONG_KEY)
    settings = load_settings()
    assert settings.environment == "production"
    assert settings.with_dev_key() == (settings, False)


def test_development_generates_a_key() -> None:
    settings = load_settings()
    first, generated = settings.with_dev_key()
    second, _ = settings.with_dev_key()
    assert generated and first.api_key is not None and second.api_key is not None
    key = first.api_key.get_secret_value()
    assert key.startswith("sk-dev-") and len(key) >= MIN_PRODUCTION_KEY_LENGTH
    assert key != second.api_key.get_secret_value()
    assert settings.api_key is None  # the original is unchanged


def test_development_keeps_a_given_key() -> None:
    settings = Settings(api_key="sk-mine")
    kept, generated = settings.with_dev_key()
    assert not generated and kept.api_key is not None and kept.api_key.get_secret_value() == "sk-mine"


def test_max_n_must_fit_in_a_batch() -> None:
    with pytest.raises(SettingsError, match="max_n"):
        load_settings(max_n=8, max_batch_size=4)
    assert load_settings(max_n=4, max_batch_size=4).max_n == 4


def test_vllm_engine_needs_upstreams_or_spawn() -> None:
    with pytest.raises(SettingsError, match="--upstream URL"):
        load_settings(engine="vllm")
    with pytest.raises(SettingsError, match="not both"):
        load_settings(engine="vllm", spawn=True, upstream=["http://a:8001"])
    assert load_settings(engine="vllm", spawn=True).spawn


def test_upstreams_from_env_are_split_on_spaces_or_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAGATE_ENGINE", "vllm")
    monkeypatch.setenv("LORAGATE_UPSTREAM", "http://a:8001, http://b:8001 http://c:8001")
    assert load_settings().upstream == ["http://a:8001", "http://b:8001", "http://c:8001"]


def test_upstreams_must_be_http_urls() -> None:
    with pytest.raises(SettingsError, match="must start with http"):
        load_settings(engine="vllm", upstream=["a:8001"])
