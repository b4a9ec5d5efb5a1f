"""What the evaluation asks: the unseen held-out split, the independent requests, the general suites.

    held_out      the recipe's held-out rows (split by group, so no answer or source text of them
                  is in training); each row's `expected` fields, or those of its parsed reference
    independent   `held_out_independent.jsonl` beside the training file: requests written by hand,
                  independently of the generator, each with an `expected` object
    forgetting    `adapters/datasets/general/forgetting.jsonl` (see `forgetting`)
    off_domain    `off_domain.jsonl` beside the training file: requests the department should not
                  answer as a ticket or a clause review

A missing optional file leaves its set out of the report rather than failing the evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import InstructionRow, prompt_text
from .fields import FIELD_SCORERS, expected_from_reference
from .forgetting import Probe, load_probes
from .recipe import Recipe
from .splits import instruction_splits

GENERAL = Path(__file__).parent / "datasets" / "general"


@dataclass(frozen=True)
class EvalRow:
    prompt: str
    reference: str | None
    category: str
    expected: dict[str, Any] = field(default_factory=dict)


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file() or path.suffix.lower() != ".jsonl":
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _expected(check: str | None, record: dict[str, Any], reference: str | None) -> dict[str, Any]:
    given = record.get("expected")
    if isinstance(given, dict) and given:
        return dict(given)
    if check in FIELD_SCORERS and reference:
        return expected_from_reference(check, reference)
    return {}


def _prompt(record: dict[str, Any]) -> str:
    row = InstructionRow(record["instruction"], record.get("context") or "", "", record.get("category", ""))
    return prompt_text(row)


def held_out_rows(recipe: Recipe) -> list[EvalRow]:
    """The recipe's held-out split, with each row's expected fields."""
    check = recipe.data.format_check
    rows = instruction_splits(recipe)[1][: recipe.eval.limit]
    given = {_prompt(r): r for r in _records(Path(recipe.data.held_out))} if recipe.data.held_out else {}
    out = []
    for row in rows:
        prompt = prompt_text(row)
        out.append(
            EvalRow(prompt, row.response, row.category, _expected(check, given.get(prompt, {}), row.response))
        )
    return out


def _beside_train(recipe: Recipe, name: str) -> Path:
    """The recipe's file of that name (`data.held_out_independent`...), else the file beside `train`."""
    named = getattr(recipe.data, name.removesuffix(".jsonl"))
    return Path(named) if named else Path(recipe.data.train).parent / name


def independent_rows(recipe: Recipe) -> list[EvalRow]:
    check = recipe.data.format_check
    rows = []
    for record in _records(_beside_train(recipe, "held_out_independent.jsonl"))[: recipe.eval.limit]:
        reference = record.get("response") or None
        rows.append(
            EvalRow(
                _prompt(record), reference, record.get("category", ""), _expected(check, record, reference)
            )
        )
    return rows


def forgetting_probes(recipe: Recipe, limit: int | None = None) -> list[Probe]:
    path = Path(recipe.data.forgetting or GENERAL / "forgetting.jsonl")
    return load_probes(path)[:limit] if path.is_file() else []


def off_domain_prompts(recipe: Recipe, limit: int | None = None) -> list[str]:
    records = _records(_beside_train(recipe, "off_domain.jsonl"))
    return [_prompt(r) for r in records][:limit]
