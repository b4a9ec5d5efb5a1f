"""``loragate state ...``: the shared state database (``state_url``) from the command line.

    loragate state import [--state-url URL] [--keys-file F] [--tenants-file F] [--ledger-url URL]
    loragate state show   [--state-url URL]

``import`` copies the keys file and the tenants file into the database, once, before the first
gateway with ``state_url`` starts (see ``service/shared_state/importing.py`` for why it is a command
and what a second run does). It is audited as ``cli:<user>``, action ``state.import``. ``show``
prints the tenants version in force and the number of keys.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_registry import add_ledger_option
from .config import Settings


def add_state_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "state",
        help="keys and tenants in the shared database (state_url)",
        description="Keys and tenants in the PostgreSQL database that several gateways share.",
    )
    verbs = parser.add_subparsers(dest="state_command", required=True)
    imports = verbs.add_parser(
        "import",
        help="copy the keys file and the tenants file into an empty state database",
        description="Copy keys_file and tenants_file into the state database: keys already there are"
        " skipped, the tenants document only when it has none. Safe to run again.",
    )
    show = verbs.add_parser("show", help="the tenants version in force and the number of keys")
    for verb in (imports, show):
        verb.add_argument("--config", type=Path, help="YAML settings file (env LORAGATE_CONFIG)")
        verb.add_argument("--state-url", dest="state_url", metavar="URL", help=_help("state_url"))
    for name in ("keys_file", "tenants_file", "model_name"):
        imports.add_argument("--" + name.replace("_", "-"), dest=name, metavar=name.upper(), help=_help(name))
    add_ledger_option(imports)


def _help(name: str) -> str:
    field = Settings.model_fields[name]
    return f"{field.description} (default: {field.default}; env LORAGATE_{name.upper()})"


def run_state(args: argparse.Namespace, settings: Settings) -> int:
    from .admin.audit import cli_actor, record_from_cli
    from .admin.operations import Change
    from .keys import KeyStoreError
    from .shared_state import StateDatabase, StateSchemaError, StateUnavailable
    from .shared_state.importing import import_files
    from .tenancy import TenantsFileError

    if settings.state_url is None:
        print("loragate: no state database: set --state-url or LORAGATE_STATE_URL", file=sys.stderr)
        return 2
    try:
        db = StateDatabase(settings.state_url)
    except (StateUnavailable, StateSchemaError) as exc:
        print(f"loragate: {exc}", file=sys.stderr)
        return 1
    try:
        if args.state_command == "show":
            document = db.tenants()
            version = f"version {document.version} (by {document.actor})" if document else "none stored"
            print(f"State database {db.name}\n  tenants: {version}\n  keys: {len(db.all_keys())}")
            return 0
        done = import_files(db, settings.keys_file, settings.tenants_file, settings.model_name, cli_actor())
    except (TenantsFileError, KeyStoreError) as exc:
        print(f"loragate: {exc}", file=sys.stderr)
        return 2
    except StateUnavailable as exc:
        print(f"loragate: {exc.message}", file=sys.stderr)
        return 1
    finally:
        db.close()
    print(f"Keys: {done.keys_added} of {done.keys_read} in {settings.keys_file} added (the rest: there).")
    if done.tenants_version is not None:
        print(f"Tenants: {settings.tenants_file} stored as version {done.tenants_version}.")
    elif done.tenants_kept is not None:
        print(f"Tenants: version {done.tenants_kept} is stored; left as it is (PUT /admin/v1/tenants).")
    else:
        print("Tenants: no tenants file and none stored: the gateways run single-tenant.")
    after = {"keys_added": done.keys_added, "tenants_version": done.tenants_version}
    warning = record_from_cli(settings, Change("state.import", db.name, None, after))
    if warning:
        print(f"loragate: warning: done, but not in the audit log: {warning}", file=sys.stderr)
    return 0
