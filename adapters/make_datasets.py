"""Write the demo department data sets (it-helpdesk, legal) and the replay set from deterministic templates.

    .venv/bin/python -m adapters.make_datasets              # into adapters/datasets/
    .venv/bin/python -m adapters.make_datasets --out /tmp/x

Honest held-out rows: rows are written per *group* (a help-desk problem, a legal clause), and whole
groups are held out, at most one per slug or clause type, so that no held-out answer, question or
clause text appears in training (tests/adapters/test_leakage.py checks it). Held-out rows also use
request phrasings that training never sees.

Preference data is split three ways by group: `preferences_reward.jsonl` (the reward model's
pairs) and `preferences.jsonl` (DPO's) come from two disjoint halves of the training groups,
`preferences_held_out.jsonl` from the held-out groups. Each pair ranks the department's *preferred*
answer (the reference plus what the team asked for after using L2, in varying words) over an
answer that breaks the format, or over the plain reference (what L2 learns to write).

The committed files are exactly what this writes (a test checks it): change the templates and
regenerate rather than editing them. The hand-written files beside them (held_out_independent,
off_domain, general/forgetting) are not generated. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import content_helpdesk as helpdesk
from . import content_legal as legal
from .data import FORMAT_CHECKS, InstructionRow, PreferencePair, prompt_text

DEFAULT_OUT = Path(__file__).resolve().parent / "datasets"
SEED = 6
HELD_OUT_FRACTION = 0.2  # of the groups
ROWS_PER_DEPARTMENT = 300
REPLAY_ROWS = 240


@dataclass(frozen=True)
class Group:
    id: str  # e.g. "vpn-connection/2", "termination/1"
    kind: str  # the slug or clause type: at most one held-out group per kind
    level: str  # the priority or risk: the held-out groups cover every level
    source: Any  # the Problem or Clause


@dataclass(frozen=True)
class Department:
    name: str
    groups: list[Group]
    row: Callable[[random.Random, Any, str, bool], InstructionRow]
    preferred: Callable[[InstructionRow, random.Random, bool], str]
    rejected: Callable[[InstructionRow, random.Random], str]


def numbered(items: Iterable[Any], kind: Callable[[Any], str], level: Callable[[Any], str]) -> list[Group]:
    """One group per item, numbered within its kind in order of appearance."""
    seen: dict[str, int] = {}
    groups = []
    for item in items:
        seen[kind(item)] = seen.get(kind(item), 0) + 1
        groups.append(Group(f"{kind(item)}/{seen[kind(item)]}", kind(item), level(item), item))
    return groups


DEPARTMENTS = (
    Department(
        "it-helpdesk",
        numbered(helpdesk.PROBLEMS, lambda p: p.slug, lambda p: p.priority),
        helpdesk.helpdesk_row,
        helpdesk.helpdesk_preferred,
        helpdesk.helpdesk_rejected,
    ),
    Department(
        "legal",
        numbered(legal.CLAUSES, lambda c: c.name, lambda c: c.risk),
        legal.legal_row,
        legal.legal_preferred,
        legal.legal_rejected,
    ),
)


def _rank(seed: int, salt: str, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{salt}\0{key}".encode()).digest()


def held_out_groups(groups: Sequence[Group], fraction: float, seed: int) -> set[str]:
    """`round(len(groups) * fraction)` group ids by seeded hash: one per kind and never a kind's
    last group, the first of each level (priority, risk) first, so that every level is held out."""
    per_kind = Counter(group.kind for group in groups)
    eligible = [
        g for g in sorted(groups, key=lambda g: _rank(seed, "held-out", g.id)) if per_kind[g.kind] >= 2
    ]
    levels = sorted({g.level for g in eligible})
    ordered = [next(g for g in eligible if g.level == level) for level in levels]
    ordered += [g for g in eligible if g not in ordered]
    chosen: dict[str, str] = {}  # kind -> group id
    for group in ordered:
        if len(chosen) == round(len(groups) * fraction):
            break
        chosen.setdefault(group.kind, group.id)
    return set(chosen.values())


def write_rows(
    department: Department, rng: random.Random, held: set[str], count: int
) -> list[InstructionRow]:
    """`count` rows, each for a group drawn at random; no instruction twice."""
    rows: list[InstructionRow] = []
    seen: set[str] = set()
    while len(rows) < count:
        group = rng.choice(department.groups)
        row = department.row(rng, group.source, group.id, group.id in held)
        if row.instruction not in seen:
            seen.add(row.instruction)
            rows.append(row)
    return rows


def build(department: Department, seed: int = SEED) -> dict[str, list[dict[str, Any]]]:
    """File name -> records for one department."""
    rng = random.Random(f"{department.name}:{seed}")
    held = held_out_groups(department.groups, HELD_OUT_FRACTION, seed)
    rows = write_rows(department, rng, held, ROWS_PER_DEPARTMENT)
    train = [row for row in rows if row.group not in held]
    held_out = [row for row in rows if row.group in held]
    check = FORMAT_CHECKS[department.name]

    def pairs(source: Iterable[InstructionRow], held_out: bool) -> list[PreferencePair]:
        """Per row: preferred over an off-format answer, and preferred over the plain reference."""
        made = []
        for row in source:
            prompt, preferred = prompt_text(row), department.preferred(row, rng, held_out)
            made.append(PreferencePair(prompt, preferred, department.rejected(row, rng)))
            made.append(PreferencePair(prompt, preferred, row.response))
        for off_format, plain in zip(made[::2], made[1::2], strict=True):
            if not check(off_format.chosen) or check(off_format.rejected) or not check(plain.rejected):
                raise RuntimeError(f"{department.name}: a template breaks its format check: {off_format}")
        return made

    # The training groups in two halves: the reward model's and DPO's pairs never share a prompt.
    train_groups = sorted({row.group for row in train}, key=lambda g: _rank(seed, "preferences", g))
    reward_groups = set(train_groups[1::2])
    return {
        "train.jsonl": [row.to_json() for row in train],
        "held_out.jsonl": [row.to_json() for row in held_out],
        "preferences.jsonl": [
            p.to_json() for p in pairs((r for r in train if r.group not in reward_groups), False)
        ],
        "preferences_reward.jsonl": [
            p.to_json() for p in pairs((r for r in train if r.group in reward_groups), False)
        ],
        "preferences_held_out.jsonl": [p.to_json() for p in pairs(held_out, True)],
    }


def generated(seed: int = SEED) -> dict[Path, list[dict[str, Any]]]:
    """Every generated file, by its path under the data set folder."""
    files = {
        Path(department.name, name): records
        for department in DEPARTMENTS
        for name, records in build(department, seed).items()
    }
    files[Path("general", "replay.jsonl")] = [
        row.to_json() for row in replay_rows(random.Random(seed), REPLAY_ROWS)
    ]
    return files


# --- replay: general instructions mixed into SFT (recipe `replay`), none of them in the forgetting suite


OPPOSITES = dict(p.split(":") for p in "hot:cold early:late full:empty heavy:light open:closed rich:poor "
                 "quiet:loud wet:dry young:old inside:outside buy:sell win:lose".split())  # fmt: skip
PLURALS = dict(p.split(":") for p in "mouse:mice child:children tooth:teeth box:boxes city:cities "
               "knife:knives woman:women sheep:sheep bus:buses leaf:leaves".split())  # fmt: skip
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WORDS = ("table", "garden", "window", "pencil", "orange", "letter", "market", "bridge", "summer", "planet")
UNITS = (("hours", "minutes", 60), ("minutes", "seconds", 60), ("metres", "centimetres", 100),
         ("kilograms", "grams", 1000), ("days", "hours", 24), ("weeks", "days", 7))  # fmt: skip
ONES = ("", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def _replay_item(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(9)
    a, b = rng.randint(12, 89), rng.randint(12, 89)
    if kind == 0:
        return f"Compute {a} + {b}.", f"{a} + {b} = {a + b}."
    if kind == 1:
        high, low = max(a, b), min(a, b)
        return f"Subtract {low} from {high}.", f"{high} - {low} = {high - low}."
    if kind == 2:
        x, y = rng.randint(13, 25), rng.randint(3, 9)
        return f"Multiply {x} by {y}.", f"{x} x {y} = {x * y}."
    if kind == 3:
        word = rng.choice(sorted(OPPOSITES))
        return f"Give the opposite of the word '{word}'.", f"The opposite of '{word}' is '{OPPOSITES[word]}'."
    if kind == 4:
        word = rng.choice(sorted(PLURALS))
        return f"Write the plural of '{word}'.", f"The plural of '{word}' is '{PLURALS[word]}'."
    if kind == 5:
        day = rng.randrange(7)
        return f"Which day of the week follows {DAYS[day]}?", f"{DAYS[(day + 1) % 7]} follows {DAYS[day]}."
    if kind == 6:
        word = rng.choice(WORDS)
        return f"How many letters does the word '{word}' have?", f"'{word}' has {len(word)} letters."
    if kind == 7:
        big, small, factor = rng.choice(UNITS)
        n = rng.randint(2, 9)
        return f"Convert {n} {big} to {small}.", f"{n} {big} are {n * factor} {small}."
    number = rng.randint(21, 99)
    words = TENS[number // 10] + (f"-{ONES[number % 10]}" if number % 10 else "")
    return f"Write the number {number} in words.", f"{number} in words is {words}."


def replay_rows(rng: random.Random, count: int) -> list[InstructionRow]:
    """`count` distinct general instructions with short, correct answers (category `general_qa`)."""
    rows: dict[str, InstructionRow] = {}
    while len(rows) < count:
        instruction, response = _replay_item(rng)
        rows.setdefault(instruction, InstructionRow(instruction, "", response, "general_qa"))
    return list(rows.values())


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for <department>/*.jsonl")
    args = parser.parse_args(argv)
    for relative, records in generated().items():
        path = args.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(path, records)
        print(f"{path}: {len(records)} rows")


if __name__ == "__main__":
    main()
