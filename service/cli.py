"""The ``loragate`` command.

    loragate serve [--config FILE] [--port 8000] ...   start the gateway
    loragate prepare-model                             convert the packaged model once

Every setting is an option of ``serve`` (``loragate serve --help``) and an
environment variable with the ``LORAGATE_`` prefix.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from .config import Settings, SettingsError, load_settings

_SECRET_FIELDS = {"api_key"}  # not on the command line: it would show in `ps`


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        if name in _SECRET_FIELDS:
            continue
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else None
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            choices=choices,
            metavar=None if choices else name.upper(),
            help=f"{field.description} (default: {field.default}; env LORAGATE_{name.upper()})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loragate", description="OpenAI-compatible LoRA serving gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the gateway", description="Start the gateway.")
    serve.add_argument("--config", type=Path, help="YAML settings file (env LORAGATE_CONFIG)")
    _add_setting_options(serve)
    prepare = commands.add_parser("prepare-model", help="convert the packaged SmolLM2 once")
    prepare.add_argument("--data-dir", type=Path, default=None)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    import os

    config = args.config or (Path(os.environ["LORAGATE_CONFIG"]) if os.environ.get("LORAGATE_CONFIG") else None)
    overrides = {name: getattr(args, name, None) for name in Settings.model_fields if name not in _SECRET_FIELDS}
    return load_settings(config, **overrides)


def serve(settings: Settings) -> None:
    import uvicorn

    from .app import create_app
    from .model_store import prepare_model

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.model_path is None:
        prepare_model(settings.resolved_model_path)  # once; shows a progress bar
    settings, generated = settings.with_dev_key()
    base_url = f"http://{settings.host}:{settings.port}/v1"
    print(f"\nloragate {settings.environment}: serving {settings.model_name} at {base_url}")
    if generated:
        assert settings.api_key is not None
        print(f"Development API key (new on every start; set LORAGATE_API_KEY to choose one):\n  {settings.api_key.get_secret_value()}")
    else:
        print("API key: the value of LORAGATE_API_KEY")
    print(f'Try: OPENAI_BASE_URL={base_url} OPENAI_API_KEY=<key> python -c "import openai; ..."\n', flush=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            serve(_settings(args))
        elif args.command == "prepare-model":
            from .model_store import prepare_model

            data_dir = args.data_dir or load_settings().data_dir
            print(prepare_model(Settings(data_dir=data_dir).resolved_model_path))
    except SettingsError as exc:
        print(f"loragate: invalid settings: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
