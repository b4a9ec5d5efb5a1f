"""``loragate adapters ...``: the registry from the command line.

    loragate adapters list
    loragate adapters publish FOLDER --name NAME --level L2|L3
    loragate adapters promote ALIAS NAME@VERSION
    loragate adapters rollback ALIAS
    loragate adapters sync [NAME@VERSION ...] [--watch SECONDS]

The registry is ``registry_dir`` or, with ``--registry-url s3://bucket/prefix`` (env
LORAGATE_REGISTRY_URL), object storage that every gateway shares (docs/registry.md). Promote and
rollback update the aliases atomically; running gateways see the change on their next request
(an s3:// registry: within a second). ``sync`` copies versions from an s3:// registry into
``registry_cache_dir`` ahead of use: on a vLLM host, as a sidecar with ``--watch``, it keeps every
alias's versions there. Publish, promote and rollback run the admin API's operations
(``service/admin/operations.py``) and write an audit entry (actor ``cli:<user>``) into the
ledger database when it can be reached.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import Settings
from .registry import AdapterRejected, Registry
from .registry_store import split_ref


def add_adapter_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = commands.add_parser("adapters", help="list, publish, promote and roll back LoRA adapters")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="aliases and every registered adapter version")
    publish = verbs.add_parser("publish", help="register a trained PEFT adapter folder as a new version")
    publish.add_argument("folder", type=Path)
    publish.add_argument("--name", required=True)
    publish.add_argument("--level", choices=["L2", "L3"], required=True)
    promote = verbs.add_parser("promote", help="point an alias at NAME@VERSION")
    promote.add_argument("alias")
    promote.add_argument("ref", metavar="NAME@VERSION")
    rollback = verbs.add_parser("rollback", help="point an alias back at its previous version")
    rollback.add_argument("alias")
    sync = verbs.add_parser("sync", help="copy versions of an s3:// registry into the local cache")
    sync.add_argument("refs", nargs="*", metavar="NAME@VERSION", help="default: every alias's versions")
    sync.add_argument("--watch", type=float, metavar="SECONDS", help="keep syncing, every SECONDS")
    for verb in verbs.choices.values():
        verb.add_argument("--config", type=Path, help="YAML settings file (env LORAGATE_CONFIG)")
        verb.add_argument("--registry-dir", dest="registry_dir", metavar="DIR", help="default: data/registry")
        verb.add_argument(
            "--registry-url",
            dest="registry_url",
            metavar="S3_URL",
            help="s3://bucket/prefix (docs/registry.md)",
        )
        verb.add_argument(
            "--registry-cache-dir",
            dest="registry_cache_dir",
            metavar="DIR",
            help="default: data/registry-cache",
        )
    for verb in (publish, promote, rollback):
        add_ledger_option(verb)
    return parser


def add_ledger_option(parser: argparse.ArgumentParser) -> None:
    """``--ledger-url``: where a command that changes something writes its audit entry."""
    parser.add_argument(
        "--ledger-url",
        dest="ledger_url",
        metavar="URL",
        help="the ledger database whose audit log records the change (default: the gateway's,"
        " sqlite:///<data_dir>/usage.db; env LORAGATE_LEDGER_URL)",
    )


def run_adapters(args: argparse.Namespace, settings: Settings) -> int:
    from .admin import operations
    from .admin.audit import record_from_cli
    from .errors import LoragateError

    registry = Registry.from_settings(settings)
    try:
        if args.verb == "list":
            _print_listing(registry)
            return 0
        if args.verb == "sync":
            return _sync(registry, args.refs or None, args.watch)
        if args.verb == "publish":
            published = operations.publish_adapter(registry, args.folder.resolve(), args.name, args.level)
            change, manifest = published.change, published.value.manifest
            print(f"published {manifest.ref} (sha256 {manifest.sha256[:12]}...)")
        elif args.verb == "promote":
            promoted = operations.promote_adapter(registry, args.alias, args.ref)
            change = promoted.change
            print(f"{args.alias} -> {promoted.value}")
        else:
            rolled_back = operations.rollback_adapter(registry, args.alias)
            change = rolled_back.change
            print(f"{args.alias} -> {rolled_back.value}")
    except (LoragateError, AdapterRejected) as exc:  # AdapterRejected: the storage cannot be reached
        print(f"loragate: {exc.message}", file=sys.stderr)
        return 1
    warning = record_from_cli(settings, change)
    if warning:
        print(f"loragate: warning: done, but not in the audit log: {warning}", file=sys.stderr)
    return 0


def _sync(registry: Registry, refs: list[str] | None, watch: float | None) -> int:
    """Sync once, or every ``watch`` seconds until stopped. A version that fails is reported and the
    others go on; it is tried again on the next round."""
    done: set[str] = set()
    while True:
        try:
            wanted, failed = refs or registry.alias_refs(), False
        except AdapterRejected as exc:  # the aliases cannot be read now
            print(f"loragate: {exc.message}", file=sys.stderr, flush=True)
            wanted, failed = [], True
        for ref in wanted:
            if ref in done:
                continue
            try:
                adapter = registry.load(*split_ref(ref))
            except AdapterRejected as exc:
                print(f"loragate: {ref}: {exc.message}", file=sys.stderr, flush=True)
                failed = True
                continue
            print(f"{adapter.ref} -> {adapter.path}", flush=True)
            done.add(ref)
        if watch is None:
            return 1 if failed else 0
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return 0


def _print_listing(registry: Registry) -> None:
    aliases = registry.aliases()
    print("ALIAS".ljust(24) + "SERVES")
    for alias, ref in sorted(aliases.items()):
        print(alias.ljust(24) + ref)
    print("\n" + "ADAPTER".ljust(28) + "LEVEL  RANK  CREATED                    SHA256")
    for name in registry.names():
        for adapter in registry.versions(name):
            m = adapter.manifest
            print(f"{m.ref:<28}{m.level:<7}{m.rank:<6}{m.created:<27}{m.sha256[:12]}")
