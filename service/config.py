"""Settings: defaults < YAML file < environment (LORAGATE_*) < command line.

``load_settings()`` builds them; nothing here runs at import time.
"""

from __future__ import annotations

import secrets
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

# Keys that must never protect a production deployment.
INSECURE_KEYS = frozenset({"", "changeme", "change-me", "secret", "sk-loragate", "sk-local", "dev", "test"})
MIN_PRODUCTION_KEY_LENGTH = 20

_yaml_file: ContextVar[Path | None] = ContextVar("loragate_yaml_file", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    """Values from the YAML file named by ``load_settings(config_file=...)``."""

    def __init__(self, settings_cls: type[BaseSettings]):
        super().__init__(settings_cls)
        path = _yaml_file.get()
        data = yaml.safe_load(path.read_text()) if path else None
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"{path}: the settings file must hold a mapping of names to values")
        self._data: dict[str, Any] = data or {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAGATE_", env_nested_delimiter="__", extra="forbid")

    environment: Literal["development", "production"] = Field(
        "development", description="development generates a key if none is set; production refuses weak keys"
    )
    api_key: SecretStr | None = Field(None, description="the API key clients send as a Bearer token")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    data_dir: Path = Field(Path("data"), description="folder for prepared models and other generated files")
    model_path: Path | None = Field(
        None,
        description="a Hugging Face model folder; default: the packaged SmolLM2, prepared under data_dir",
    )
    model_name: str = Field("SmolLM2-135M-Instruct", description="the base model's name in the API")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="weights and compute type; auto is bfloat16"
    )
    device: str = Field("auto", description="auto, cpu or cuda[:N]")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: torch's choice")
    max_batch_size: int = Field(32, ge=1, description="sequences decoded together by the embedded engine")
    max_context: int | None = Field(
        None, ge=16, description="prompt + completion tokens; default: the model's"
    )
    default_max_tokens: int = Field(512, ge=1, description="completion limit when a request sets none")
    max_n: int = Field(8, ge=1, description="the largest n a request may ask for")
    max_request_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies get 413")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug, info, warning or error"
    )
    tenants_file: Path | None = Field(
        None, description="YAML file of tenants, departments and adapters; none: single-tenant mode"
    )
    keys_file: Path = Field(Path("data/keys.json"), description="API keys of the tenants, stored as hashes")
    department_header: str = Field("X-Department", description="request header that selects the department")
    prompts_dir: Path = Field(Path("prompts"), description="folder of the tenants' L1 prompt templates")
    registry_dir: Path = Field(Path("data/registry"), description="folder of the adapter registry")
    max_loaded_adapters: int = Field(
        8, ge=1, description="adapters the engine (or each vLLM replica) keeps loaded; least recent go first"
    )
    engine: Literal["local", "vllm"] = Field(
        "local", description="local: the embedded transformers engine; vllm: vLLM servers"
    )
    upstream: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="vLLM replicas' base URLs (http://host:port), for --engine vllm"
    )
    spawn: bool = Field(False, description="--engine vllm: start and supervise a local vLLM server")
    vllm_python: str = Field("python3", description="--spawn: the Python that has vLLM installed")
    vllm_port: int = Field(8001, ge=1, le=65535, description="--spawn: the local vLLM server's port")
    vllm_max_loras: int = Field(4, ge=1, description="--spawn: adapters vLLM batches together (--max-loras)")
    vllm_args: str = Field("", description="--spawn: more vLLM flags, shell-quoted")
    tool_call_parser: str = Field(
        "hermes",
        description="--spawn: vLLM's --tool-call-parser for the served model (hermes, llama3_json, mistral..."
        "); empty: vLLM runs without tool calling and refuses requests with tools",
    )
    max_schema_bytes: int = Field(
        65_536,
        ge=256,
        description="the largest JSON schema (response_format or a tool's parameters), in bytes",
    )
    grammar_cache_size: int = Field(
        128, ge=1, description="embedded engine: compiled output grammars kept, one per distinct schema"
    )
    embeddings_upstream: str | None = Field(
        None,
        description="an OpenAI-compatible server (vLLM with an embedding model, or any other) that"
        " /v1/embeddings is relayed to: its base URL, http(s)://host:port",
    )
    embeddings_model: str | None = Field(
        None, description="the embedding model's name, as clients send it and the upstream knows it"
    )
    embeddings_upstream_api_key: SecretStr | None = Field(
        None, description="a Bearer key that the embeddings upstream requires, if any"
    )
    local_embedding_model: Path | None = Field(
        None,
        description="a local transformers model folder that serves /v1/embeddings in this process"
        " (mean-pooled, normalised), when no embeddings_upstream is set",
    )
    affinity_slack: int = Field(
        4, ge=0, description="requests a replica holding the adapter may have beyond the least busy one"
    )
    upstream_api_key: SecretStr | None = Field(
        None, description="a Bearer key the vLLM replicas require (their --api-key); sent on every hop"
    )
    upstream_ca_bundle: Path | None = Field(
        None,
        description="PEM file of the CAs that https:// upstreams are verified against; default: the system's",
    )
    upstream_resolve_interval: float = Field(
        10.0,
        gt=0,
        description="seconds between DNS lookups of the upstream host names; each address is a replica",
    )
    registry_url: str | None = Field(
        None,
        description="s3://bucket/prefix: the adapter registry on object storage, shared by every gateway;"
        " default: registry_dir on local disk",
    )
    registry_cache_dir: Path = Field(
        Path("data/registry-cache"), description="where adapter versions from an s3:// registry are synced to"
    )
    s3_endpoint_url: str | None = Field(
        None, description="an S3-compatible server's URL (MinIO, Ceph, moto); default: AWS S3"
    )
    state_url: str | None = Field(
        None,
        description="postgresql://...: keys and tenants in a database that several gateways share;"
        " default: keys_file and tenants_file",
    )
    upstream_connect_timeout: float = Field(5.0, gt=0, description="seconds to connect to a vLLM replica")
    upstream_read_timeout: float = Field(300.0, gt=0, description="seconds a vLLM replica may stay silent")
    health_interval: float = Field(2.0, gt=0, description="seconds between vLLM replica health checks")
    template_render_timeout: float = Field(
        1.0, gt=0, description="seconds an L1 template may take to render; a slower version is refused"
    )
    max_template_chars: int = Field(
        32_768, ge=256, description="the longest system prompt an L1 template may render, in characters"
    )
    max_prefill_tokens: int = Field(
        8192,
        ge=64,
        description="embedded engine: prompt tokens (rows x the longest, padded) prefilled at once; "
        "a prefill's memory grows with their square, and a longer prompt gets 400",
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds a client may take to send a request's head, counted from its connection or,"
        " on a kept-alive one, from the request's first byte; slower: 408 and the connection closed",
    )
    body_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds a client may take to send a request's whole body once the head is in"
        " (while the gateway is not reading, the clock does not run out); slower: 408 and closed",
    )
    keep_alive_timeout: float = Field(
        5.0, gt=0, description="seconds an idle connection stays open between requests"
    )
    max_connections: int = Field(
        1024,
        ge=1,
        description="connections served at once; a request on one more gets 503 (keep it below the"
        " process's file limit, ulimit -n, which serve raises to its hard limit when it can)",
    )
    max_header_bytes: int = Field(
        32_768, ge=1024, description="the largest request head (request line and headers); larger: 431"
    )

    # -- limits and budgets (service/limits/) --------------------------------------------------
    limits_backend: Literal["memory", "redis"] = Field(
        "memory", description="where rate-limit and budget counters live: this process, or Redis (cluster)"
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="limits_backend redis: the Redis server")
    limits_failure_mode: Literal["open", "closed"] = Field(
        "open",
        description="when the limits backend cannot be reached: open admits requests (unlimited),"
        " closed refuses them with 503",
    )
    # -- usage ledger (service/ledger/) --------------------------------------------------------
    ledger_url: str | None = Field(
        None,
        description="where the usage ledger and the admin audit log are written: sqlite:///PATH (WAL)"
        " or postgresql://user:pass@host/db (several gateways); default: sqlite:///<data_dir>/usage.db",
    )
    ledger_batch_seconds: float = Field(
        0.001,
        ge=0,
        le=5.0,
        description="under load, the ledger writer gathers records this long into one commit (an idle"
        " writer commits at once); every answer waits for its record's commit",
    )

    # -- administration (service/admin/) ---------------------------------------------------------
    admin_api_key: SecretStr | None = Field(
        None,
        description="the key of /admin/v1 (distinct from every tenant key; tenant keys get 403 there);"
        " none: the admin API answers 404",
    )
    metrics_auth: bool = Field(
        False, description="/metrics and /ready require a Bearer key (the admin key or a tenant key)"
    )
    # -- holding under load (backpressure, deadlines, shutdown) ------------------------------------
    max_queued_requests: int = Field(
        256,
        ge=1,
        description="generating requests admitted beyond what the engine runs at once; more: a fast 429"
        " (503 while draining) instead of an unbounded queue",
    )
    request_timeout: float = Field(
        600.0, gt=0, description="seconds a whole generating request may take; then 504 or an error event"
    )
    first_token_timeout: float = Field(
        120.0, gt=0, description="seconds until a request's first token; then 504 and the work is aborted"
    )
    shutdown_grace: float = Field(
        30.0,
        ge=0,
        description="on SIGTERM: seconds in-flight answers may take to finish before they are ended"
        " with an error event and [DONE]",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlSource(settings_cls)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("upstream", mode="before")
    @classmethod
    def _split_upstream(cls, value: Any) -> Any:
        """``LORAGATE_UPSTREAM="http://a:8001 http://b:8001"`` (spaces or commas) as well as a list."""
        return value.replace(",", " ").split() if isinstance(value, str) else value

    @field_validator("upstream")
    @classmethod
    def _upstream_urls(cls, value: list[str]) -> list[str]:
        bad = [url for url in value if not url.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"upstream URLs must start with http:// or https:// (got {bad[0]!r})")
        return value

    @model_validator(mode="after")
    def _refuse_weak_keys_in_production(self) -> Settings:
        if self.environment == "production":
            key = self.api_key.get_secret_value() if self.api_key else ""
            if key.lower() in INSECURE_KEYS or len(key) < MIN_PRODUCTION_KEY_LENGTH:
                raise ValueError(
                    "production needs LORAGATE_API_KEY set to a random key of at least "
                    f"{MIN_PRODUCTION_KEY_LENGTH} characters (a default or short key is refused)"
                )
        return self

    @model_validator(mode="after")
    def _admin_key_of_its_own(self) -> Settings:
        """A tenant key must not administer; in production the admin key is as strong as the API key."""
        if self.admin_api_key is None:
            return self
        admin = self.admin_api_key.get_secret_value()
        if self.api_key is not None and admin == self.api_key.get_secret_value():
            raise ValueError("admin_api_key must differ from api_key (a tenant key must not administer)")
        if self.environment == "production" and (
            admin.lower() in INSECURE_KEYS or len(admin) < MIN_PRODUCTION_KEY_LENGTH
        ):
            raise ValueError(
                "production needs LORAGATE_ADMIN_API_KEY to be a random key of at least "
                f"{MIN_PRODUCTION_KEY_LENGTH} characters (a default or short key is refused)"
            )
        return self

    @model_validator(mode="after")
    def _vllm_has_replicas(self) -> Settings:
        if self.engine == "vllm" and bool(self.upstream) == self.spawn:
            raise ValueError("--engine vllm needs either --upstream URL [URL ...] or --spawn (not both)")
        return self

    @model_validator(mode="after")
    def _n_fits_in_a_batch(self) -> Settings:
        if self.max_n > self.max_batch_size:
            raise ValueError(f"max_n ({self.max_n}) must not exceed max_batch_size ({self.max_batch_size})")
        return self

    @property
    def resolved_ledger_url(self) -> str:
        return self.ledger_url or f"sqlite:///{self.data_dir / 'usage.db'}"

    @property
    def resolved_model_path(self) -> Path:
        return self.model_path or self.data_dir / "models" / "smollm2-135m-instruct"

    def with_dev_key(self) -> tuple[Settings, bool]:
        """Settings with an API key; in development one is generated when none is set."""
        if self.api_key is not None:
            return self, False
        key = SecretStr("sk-dev-" + secrets.token_urlsafe(24))
        return self.model_copy(update={"api_key": key}), True


class SettingsError(ValueError):
    """Invalid settings; the message names the fields and never echoes their values."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    token = _yaml_file.set(config_file)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise SettingsError(problems) from None
    finally:
        _yaml_file.reset(token)
