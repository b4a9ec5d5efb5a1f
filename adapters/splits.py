"""The rows each step reads: the train and held-out splits, SFT's rows with replay, each purpose's pairs.

Malformed rows stop a step with their file and line, unless the recipe says `data.skip_bad_rows`
(or `loragate train ... --skip-bad-rows`): then they are left out and counted in the log.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from .data import DataError, InstructionRow, PreferencePair, read_instructions, read_preferences, split
from .recipe import Recipe
from .runs import StepError

log = logging.getLogger("adapters")


def _report(path: Path, skipped: list[DataError]) -> None:
    if skipped:
        shown = "; ".join(f"line {e.line}: {e.problem}" for e in skipped[:3])
        more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
        log.warning("data: skipped %d bad row(s) of %s: %s%s", len(skipped), path, shown, more)


def instructions(recipe: Recipe, path: Path) -> list[InstructionRow]:
    rows, skipped = read_instructions(path, skip_bad_rows=recipe.data.skip_bad_rows)
    _report(path, skipped)
    return rows


def preferences(recipe: Recipe, path: Path) -> list[PreferencePair]:
    pairs, skipped = read_preferences(path, skip_bad_rows=recipe.data.skip_bad_rows)
    _report(path, skipped)
    return pairs


def instruction_splits(recipe: Recipe) -> tuple[list[InstructionRow], list[InstructionRow]]:
    """(train, held_out): the recipe's held-out file, or a split of `train` by the recipe's seed."""
    rows = instructions(recipe, recipe.data.train)
    if recipe.data.held_out is not None:
        return rows, instructions(recipe, recipe.data.held_out)
    return split(rows, recipe.data.held_out_fraction, recipe.seed)


def replay_count(train_rows: int, fraction: float) -> int:
    """Replay rows for `fraction` of the mix: train / (train + replay) = 1 - fraction."""
    return round(train_rows * fraction / (1.0 - fraction))


def sft_rows(recipe: Recipe) -> list[InstructionRow]:
    """The train split plus, with `replay`, general rows drawn by seed (fewer if the file is short)."""
    train, _ = instruction_splits(recipe)
    if recipe.replay is None:
        return train
    pool = instructions(recipe, recipe.replay.file)
    wanted = replay_count(len(train), recipe.replay.fraction)
    if wanted > len(pool):
        log.warning("data: replay wants %d rows, %s has %d: using all", wanted, recipe.replay.file, len(pool))
    drawn = random.Random(recipe.seed).sample(pool, min(wanted, len(pool)))
    mixed = train + drawn
    random.Random(recipe.seed + 1).shuffle(mixed)
    log.info("data: %d train rows + %d replay rows from %s", len(train), len(drawn), recipe.replay.file)
    return mixed


def preference_splits(recipe: Recipe) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(DPO's pairs, held-out pairs)."""
    if recipe.data.preferences is None:
        raise StepError(f"recipe for {recipe.department} names no `data.preferences` file")
    pairs = preferences(recipe, recipe.data.preferences)
    if recipe.data.preferences_held_out is not None:
        return pairs, preferences(recipe, recipe.data.preferences_held_out)
    return split(pairs, recipe.data.held_out_fraction, recipe.seed)


def reward_splits(recipe: Recipe) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(the reward model's pairs, held-out pairs): `data.preferences_reward` when the recipe names
    it (pairs DPO and the evaluation never see), else the same as `preference_splits`."""
    dpo, held_out = preference_splits(recipe)
    if recipe.data.preferences_reward is None:
        return dpo, held_out
    return preferences(recipe, recipe.data.preferences_reward), held_out
