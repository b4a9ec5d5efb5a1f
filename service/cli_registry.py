"""``loragate adapters ...``: the registry from the command line.

    loragate adapters list
    loragate adapters publish FOLDER --name NAME --level L2|L3
    loragate adapters promote ALIAS NAME@VERSION
    loragate adapters rollback ALIAS

Promote and rollback rewrite the aliases file; running gateways see the change
on their next request.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import Settings
from .registry import AdapterRejected, Registry


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
    for verb in verbs.choices.values():
        verb.add_argument("--config", type=Path, help="YAML settings file (env LORAGATE_CONFIG)")
        verb.add_argument("--registry-dir", dest="registry_dir", metavar="DIR", help="default: data/registry")
    return parser


def run_adapters(args: argparse.Namespace, settings: Settings) -> int:
    registry = Registry.from_settings(settings)
    try:
        if args.verb == "list":
            _print_listing(registry)
        elif args.verb == "publish":
            adapter = registry.publish(args.folder, name=args.name, level=args.level)
            print(f"published {adapter.ref} (sha256 {adapter.manifest.sha256[:12]}...)")
        elif args.verb == "promote":
            print(f"{args.alias} -> {registry.promote(args.alias, args.ref)}")
        elif args.verb == "rollback":
            print(f"{args.alias} -> {registry.rollback(args.alias)}")
    except AdapterRejected as exc:
        print(f"loragate: {exc.message}")
        return 1
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
