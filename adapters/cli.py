"""`loragate train ...`: the adapter factory's steps, each driven by a department recipe.

    loragate train sft     --recipe adapters/recipes/it-helpdesk.yaml   L2: LoRA SFT
    loragate train reward  --recipe ...                                 reward model (LoRA classifier)
    loragate train rl      --recipe ...                                 L3: RLOO/GRPO with the reward model
    loragate train dpo     --recipe ...                                 L3: DPO (or KTO, ORPO) on pairs
    loragate train rlaif   --recipe ...                                 L3: judged samples, then DPO
    loragate train eval    --recipe ...                                 base vs L2 vs L3 report
    loragate train publish --recipe ... --level L2|L3                   gate, checks, registry
    loragate train chain   --recipe ... [--until L2]                    sft, reward, L3, eval, publish
    loragate train data    --recipe ... [--skip-bad-rows]               check the data files, count rows
    loragate train summary RECIPE...                                    the figures of finished runs
    loragate train fields                                               every recipe field, with help

Common options: `--set key=value` (repeatable) overrides a recipe field; `--force` trains again
even when the run folder holds a finished run of the same config; `--skip-bad-rows` leaves out
malformed data rows and reports how many (without it the first one stops the step, naming its
file and line). An interrupted step resumes from its last checkpoint when run again with the
same config. `chain --until L2` stops after publishing L2 (no preference data needed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from .recipe import Recipe, RecipeError, field_help, load_recipe

STEPS = ("sft", "reward", "rl", "dpo", "rlaif", "eval")


def add_train_commands(commands: argparse._SubParsersAction, help_line: str) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """``train`` and its steps; ``help_line`` is its line in ``loragate --help`` (service.cli.TRAIN_HELP)."""
    parser = commands.add_parser(
        "train",
        help=help_line,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    steps = parser.add_subparsers(dest="step", required=True)
    helps = {"chain": "the whole chain", "data": "load every data file of the recipe and count its rows"}
    for name in (*STEPS, "publish", "chain", "data"):
        step = steps.add_parser(name, help=helps.get(name, f"the {name} step"))
        step.add_argument("--recipe", required=True, help="the department's YAML recipe")
        step.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        step.add_argument("--force", action="store_true", help="start afresh even if a run finished")
        step.add_argument(
            "--skip-bad-rows", action="store_true", help="leave out malformed data rows and report how many"
        )
        if name == "publish":
            step.add_argument("--level", choices=["L2", "L3"], required=True)
        if name == "chain":
            step.add_argument(
                "--until", choices=["L2", "L3"], default="L3", help="L2: sft, eval, publish L2 only"
            )
    steps.add_parser("fields", help="every recipe field, its default and its meaning")
    summary = steps.add_parser("summary", help="the figures of the departments' finished runs")
    summary.add_argument("recipes", nargs="+", help="department recipes")
    return parser


def _runner(step: str) -> Callable[..., dict[str, Any]]:
    if step == "sft":
        from .sft import run_sft as runner
    elif step == "reward":
        from .reward import run_reward as runner
    elif step == "rl":
        from .rl import run_rl as runner
    elif step == "dpo":
        from .dpo import run_dpo as runner
    elif step == "rlaif":
        from .rlaif import run_rlaif as runner
    else:
        from .evaluate import run_eval as runner
    return runner


def run_step(recipe: Recipe, step: str, force: bool = False) -> dict[str, Any]:
    started = time.monotonic()
    figures = _runner(step)(recipe, force=force)
    logging.getLogger("adapters").info("%s %s: %.0f s", recipe.department, step, time.monotonic() - started)
    return figures


def run_chain(recipe: Recipe, force: bool = False, until: str = "L3") -> dict[str, Any]:
    """sft, reward, the recipe's L3 step, eval, then publish L2 and L3 (each behind its gate).

    `until="L2"`: sft, eval and publish L2 only (a department with instruction rows alone).
    """
    from .publish import publish

    steps = ("sft", "eval") if until == "L2" else ("sft", "reward", recipe.publish.l3, "eval")
    levels = ("L2",) if until == "L2" else ("L2", "L3")
    for step in steps:
        run_step(recipe, step, force)
    refs = {}
    for level in levels:  # each level behind its gate: L2 stays published when L3's gate refuses
        refs[level] = publish(recipe, level).ref  # type: ignore[arg-type]
        print(f"{recipe.department}: published {refs[level]} ({level})", flush=True)
    return refs


def check_data(recipe: Recipe) -> list[str]:
    """One line per data file of the recipe: rows loaded and bad rows skipped (errors raise DataError)."""
    from .data import read_instructions, read_preferences, read_requests

    named = dict(recipe.data.files())
    if recipe.replay is not None:
        named["replay"] = recipe.replay.file
    lines = []
    for name, path in named.items():
        if name == "forgetting" or (name != "train" and not path.is_file()):
            lines.append(f"{name}: {path}" + ("" if path.is_file() else " (missing)"))
            continue
        read: Callable[..., tuple[list[Any], list[Any]]] = read_instructions
        if name.startswith("preferences"):
            read = read_preferences
        elif name in ("held_out_independent", "off_domain"):
            read = read_requests
        rows, skipped = read(path, skip_bad_rows=recipe.data.skip_bad_rows)
        lines.append(f"{name}: {path}: {len(rows)} rows, {len(skipped)} bad rows skipped")
        lines += [f"  skipped {error}" for error in skipped[:5]]
        if len(skipped) > 5:
            lines.append(f"  ... and {len(skipped) - 5} more")
    return lines


def run_train(args: argparse.Namespace) -> int:
    from .publish import publish
    from .runs import StepError

    if args.step == "fields":
        print("\n".join(field_help()))
        return 0
    if args.step == "summary":
        from .report import summary

        print(summary([load_recipe(path) for path in args.recipes]))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from service.registry import AdapterRejected

    from .data import DataError

    try:
        overrides = [*args.overrides, *(["data.skip_bad_rows=true"] if args.skip_bad_rows else [])]
        recipe = load_recipe(args.recipe, overrides)
        if args.step == "data":
            print("\n".join(check_data(recipe)))
        elif args.step == "publish":
            adapter = publish(recipe, args.level)
            digest = adapter.manifest.sha256[:12]
            print(f"published {adapter.ref} to {recipe.publish.registry} (sha256 {digest}...)")
        elif args.step == "chain":
            run_chain(recipe, args.force, args.until)
        else:
            print(json.dumps(run_step(recipe, args.step, args.force), indent=2, sort_keys=True))
    except (RecipeError, DataError, StepError) as exc:
        print(f"loragate train {args.step}: {exc}", file=sys.stderr)
        return 1
    except AdapterRejected as exc:  # the registry's checks
        print(f"loragate train {args.step}: {exc.message}", file=sys.stderr)
        return 1
    return 0
