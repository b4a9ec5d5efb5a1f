"""The ``loragate`` command.

    loragate serve [--config FILE] [--port 8000] ...   start the gateway
    loragate prepare-model                             convert the packaged model once
    loragate keys create --tenant T [--department D]   a new API key, printed once (audited)
    loragate keys revoke KEY_ID                        the key stops working on the next request
    loragate keys list                                 ids, tenants, departments; never keys
    loragate adapters list|publish|promote|rollback    the adapter registry
    loragate usage report --since DATE --by GROUP      the usage ledger, per department|adapter|key|tenant
    loragate state import|show                         keys and tenants in the shared database (state_url)
    loragate train sft|reward|rl|dpo|rlaif|eval|publish  the adapter factory (adapters/cli.py)

Every setting is an option of ``serve`` (``loragate serve --help``) and an
environment variable with the ``LORAGATE_`` prefix.

The adapter factory (``adapters``, and through it TRL and torch) is imported only for ``train``:
the gateway does not depend on it, and ``serve`` starts without it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from .cli_registry import add_adapter_commands, add_ledger_option, run_adapters
from .cli_state import add_state_commands, run_state
from .cli_usage import add_usage_commands, run_usage
from .config import Settings, SettingsError, load_settings
from .model_store import MissingExtraError, require_extra

if typing.TYPE_CHECKING:
    from .keys import KeyDirectory

_SECRET_FIELDS = {"api_key", "admin_api_key"}  # not on the command line: they would show in `ps`
TRAIN_HELP = "the adapter factory: sft, reward, rl, dpo, rlaif, eval, publish"
STARTUP_FAILURE = 3  # uvicorn's exit status when the server could not start


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        if name in _SECRET_FIELDS:
            continue
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description} (default: {default}; env LORAGATE_{name.upper()})"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=help_text)
            continue
        choices = (
            typing.get_args(field.annotation)
            if typing.get_origin(field.annotation) is typing.Literal
            else None
        )
        many = typing.get_origin(field.annotation) is list
        parser.add_argument(
            flag,
            dest=name,
            default=None,
            nargs="+" if many else None,
            choices=choices,
            metavar=None if choices else ("URL" if many else name.upper()),
            help=help_text,
        )


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser for ``argv``: ``train``'s steps are added only when ``argv`` is a ``train`` command.

    Otherwise ``train`` is a placeholder that lists it in ``loragate --help``, so that the other
    commands never import the adapter factory.
    """
    parser = argparse.ArgumentParser(prog="loragate", description="OpenAI-compatible LoRA serving gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the gateway", description="Start the gateway.")
    serve.add_argument("--config", type=Path, help="YAML settings file (env LORAGATE_CONFIG)")
    _add_setting_options(serve)
    prepare = commands.add_parser("prepare-model", help="convert the packaged SmolLM2 once")
    prepare.add_argument("--data-dir", type=Path, default=None)
    _add_keys_commands(commands)
    add_adapter_commands(commands)
    add_usage_commands(commands)
    add_state_commands(commands)
    if list(argv[:1]) == ["train"]:
        require_extra("train", "loragate train")
        from adapters.cli import add_train_commands

        add_train_commands(commands, TRAIN_HELP)
    else:
        commands.add_parser("train", help=TRAIN_HELP)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    import os

    config = args.config or (
        Path(os.environ["LORAGATE_CONFIG"]) if os.environ.get("LORAGATE_CONFIG") else None
    )
    overrides = {
        name: getattr(args, name, None) for name in Settings.model_fields if name not in _SECRET_FIELDS
    }
    return load_settings(config, **overrides)


def _require_engine_extras(settings: Settings) -> None:
    """The slim install (no [local] extra) serves ``--engine vllm`` only; say so before start-up."""
    if settings.engine == "local":
        require_extra("local", "--engine local (the embedded engine)")
    elif settings.spawn and settings.model_path is None:
        require_extra("local", "--spawn without --model-path (the packaged model is prepared here first)")
    if settings.local_embedding_model is not None and not settings.embeddings_upstream:
        require_extra("local", "local_embedding_model")


def serve(settings: Settings) -> None:
    import uvicorn

    from .app import create_app
    from .http_server import GatewayServer, fit_file_limit, server_options
    from .model_store import prepare_model

    _require_engine_extras(settings)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.model_path is None and (settings.engine == "local" or settings.spawn):
        prepare_model(settings.resolved_model_path)  # once; shows a progress bar
    settings, generated = settings.with_dev_key()
    base_url = f"http://{settings.host}:{settings.port}/v1"
    print(f"\nloragate {settings.environment}: serving {settings.model_name} at {base_url}")
    if settings.engine == "vllm":
        replicas = f"a vLLM it starts on port {settings.vllm_port}" if settings.spawn else settings.upstream
        print(f"Engine: vLLM ({replicas})")
    if generated:
        assert settings.api_key is not None
        print("Development API key (new on every start; set LORAGATE_API_KEY to choose one):")
        print(f"  {settings.api_key.get_secret_value()}")
    else:
        print("API key: the value of LORAGATE_API_KEY")
    print(
        f'Try: OPENAI_BASE_URL={base_url} OPENAI_API_KEY=<key> python -c "import openai; ..."\n', flush=True
    )
    # Above info, uvicorn would still format every access line's fields only to drop the line.
    access_log = settings.log_level in ("debug", "info")
    fit_file_limit(settings.max_connections)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=access_log,
        **server_options(settings),  # the HTTP protocol, its timeouts, the connection cap, the shutdown
    )
    server = GatewayServer(config, drain=app.drain)  # SIGTERM: drain, then stop (docs/operations.md)
    server.run()
    if not server.started:  # as uvicorn.run: the port was taken, or the app failed to start
        sys.exit(STARTUP_FAILURE)


def _add_keys_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser(
        "keys",
        help="create, revoke and list API keys",
        description="API keys of the tenants: only hashes are stored; a running gateway sees changes.",
    )
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="a new key for a tenant, printed once")
    create.add_argument("--tenant", required=True, help="a tenant of the tenants file")
    create.add_argument("--department", help="pin the key to this department of the tenant")
    create.add_argument(
        "--limit",
        dest="limits",
        action="append",
        metavar="NAME=VALUE",
        help="the key's own limit, e.g. requests_per_minute=60 (repeat it; see docs/limits.md)",
    )
    revoke = actions.add_parser("revoke", help="the key stops working on the next request")
    revoke.add_argument("key_id", help="the key's id, as `keys list` shows it")
    listing = actions.add_parser("list", help="ids, tenants, departments and status; never keys")
    for action in (create, revoke, listing):
        action.add_argument("--config", type=Path, help="YAML settings file (env LORAGATE_CONFIG)")
        for name in ("tenants_file", "keys_file", "state_url"):
            field = Settings.model_fields[name]
            action.add_argument(
                "--" + name.replace("_", "-"),
                dest=name,
                metavar=name.upper(),
                help=f"{field.description} (default: {field.default}; env LORAGATE_{name.upper()})",
            )
    for action in (create, revoke):
        add_ledger_option(action)


def run_keys(args: argparse.Namespace) -> int:
    """The operations of ``/admin/v1/keys`` (``service/admin/operations.py``), audited as ``cli:<user>``."""
    from .admin import operations
    from .admin.audit import record_from_cli
    from .errors import LoragateError
    from .keys import KeyStoreError
    from .limits import Limits
    from .shared_state import open_directories
    from .tenancy import TenantsFileError

    settings = _settings(args)
    try:
        _, store = open_directories(settings, watch=False)  # the files, or state_url's database
        if args.keys_command == "create":
            limits = Limits.parse(_limit_options(args.limits)) if args.limits else None
            created = operations.create_key(store, args.tenant, args.department, limits)
            key_id, change = created.value.record.key_id, created.change
            scope = f"tenant {args.tenant}" + (f", department {args.department}" if args.department else "")
            print(f"Created API key {key_id} for {scope}.")
            print(f"The key is shown only this once; keep it somewhere safe:\n  {created.value.key}")
        elif args.keys_command == "revoke":
            revoked = operations.revoke_key(store, args.key_id)
            record, change = revoked.value, revoked.change
            print(f"Revoked API key {record.key_id} (tenant {record.tenant}).")
        else:
            _print_keys(store)
            return 0
    except (TenantsFileError, KeyStoreError) as exc:
        print(f"loragate: {exc}", file=sys.stderr)
        return 2
    except LoragateError as exc:
        print(f"loragate: {exc.message}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a --limit that is not a limit
        print(f"loragate: invalid --limit: {exc}", file=sys.stderr)
        return 2
    warning = record_from_cli(settings, change)
    if warning:
        print(f"loragate: warning: done, but not in the audit log: {warning}", file=sys.stderr)
    return 0


def _limit_options(options: list[str]) -> dict[str, str]:
    """``["requests_per_minute=60", ...]`` -> a ``limits`` mapping (``Limits.parse`` checks it)."""
    limits = {}
    for option in options:
        name, sep, value = option.partition("=")
        if not sep:
            raise ValueError(f"{option!r} is not NAME=VALUE")
        limits[name.strip()] = value.strip()
    return limits


def _print_keys(store: KeyDirectory) -> None:
    records = store.list()
    if not records:
        print(f"No API keys in {store.source}.")
        return
    rows = [("ID", "TENANT", "DEPARTMENT", "CREATED", "STATUS")]
    rows += [
        (r.key_id, r.tenant, r.department or "-", r.created, "revoked" if r.revoked else "active")
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser(argv).parse_args(argv)
        if args.command == "serve":
            serve(_settings(args))
        elif args.command == "prepare-model":
            from .model_store import prepare_model

            require_extra("local", "loragate prepare-model")
            data_dir = args.data_dir or load_settings().data_dir
            print(prepare_model(Settings(data_dir=data_dir).resolved_model_path))
        elif args.command == "keys":
            return run_keys(args)
        elif args.command == "adapters":
            return run_adapters(args, _settings(args))
        elif args.command == "usage":
            return run_usage(args, _settings(args))
        elif args.command == "state":
            return run_state(args, _settings(args))
        elif args.command == "train":
            from adapters.cli import run_train

            return run_train(args)
    except SettingsError as exc:
        print(f"loragate: invalid settings: {exc}", file=sys.stderr)
        return 2
    except MissingExtraError as exc:
        print(f"loragate: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
