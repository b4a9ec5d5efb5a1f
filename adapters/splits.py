"""The rows a recipe trains and evaluates on: its train and held-out splits."""

from __future__ import annotations

from .data import InstructionRow, PreferencePair, load_instructions, load_preferences, split
from .recipe import Recipe
from .runs import StepError


def instruction_splits(recipe: Recipe) -> tuple[list[InstructionRow], list[InstructionRow]]:
    """(train, held_out): the recipe's held-out file, or a split of `train` by the recipe's seed."""
    rows = load_instructions(recipe.data.train)
    if recipe.data.held_out is not None:
        return rows, load_instructions(recipe.data.held_out)
    return split(rows, recipe.data.held_out_fraction, recipe.seed)


def preference_splits(recipe: Recipe) -> tuple[list[PreferencePair], list[PreferencePair]]:
    if recipe.data.preferences is None:
        raise StepError(f"recipe for {recipe.department} names no `data.preferences` file")
    pairs = load_preferences(recipe.data.preferences)
    if recipe.data.preferences_held_out is not None:
        return pairs, load_preferences(recipe.data.preferences_held_out)
    return split(pairs, recipe.data.held_out_fraction, recipe.seed)
