"""Write the demo department data sets (it-helpdesk, legal) from deterministic templates.

    .venv/bin/python -m adapters.make_datasets              # into adapters/datasets/
    .venv/bin/python -m adapters.make_datasets --out /tmp/x

Preference pairs rank three kinds of answer: the department's *preferred* answer (the reference
plus what the team asked for after using L2: the help desk wants every ticket to end with how to
reopen it, the legal team wants each risk line to end with what to do) over the plain reference
(what L2 learns to write), and both over an answer that breaks the format. So a reward model
learns both the format and the preference, and L3 has something to learn that L2 does not do.

The committed files under adapters/datasets/ are exactly what this writes (a test checks it), so
change the templates here and regenerate rather than editing the JSONL by hand. Everything was
written for this project; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from adapters.content_helpdesk import PROBLEMS, Problem
from adapters.content_legal import CLAUSES
from adapters.data import FORMAT_CHECKS, InstructionRow, PreferencePair, prompt_text, split

DEFAULT_OUT = Path(__file__).resolve().parent / "datasets"
SEED = 6
HELD_OUT_FRACTION = 0.15
ROWS_PER_DEPARTMENT = 300
TRAIN_PREFERENCES = 150

# --- it-helpdesk ---------------------------------------------------------------------------------


GREETINGS = ("", "Hi, ", "Hello, ", "Quick question: ", "Help! ", "Good morning. ")
DETAILS = (
    "",
    " I'm on a Windows laptop.",
    " I'm using a MacBook.",
    " This started after the last update.",
    " It worked fine yesterday.",
    " I'm working from home today.",
    " I already restarted once.",
)
KEEP_CAPITAL = ("I ", "I'", "Windows", "Outlook", "Excel", "Teams", "MFA", "Office", "Paper")
URGENT = (" I have a client meeting in ten minutes.", " I have a deadline this afternoon.")
TEAM_WIDE = (" The whole team has the same problem.", " Everyone on our floor is affected.")
PEOPLE = ("Ana", "Ben", "Chen", "Dara", "Emil", "Farah", "Gus", "Hana", "Ivo", "Jade", "Kofi", "Lena")
TEAMS = ("Sales", "Finance", "HR", "Marketing", "Engineering", "Support", "Legal", "Operations")
TRIAGE_ASKS = (
    "Create a help-desk ticket for this message from {person} in {team}.",
    "Triage the request below from {person} ({team}).",
    "{person} from {team} sent us this. Write the ticket.",
    "Turn this message from {person} in {team} into a support ticket.",
)
_LEVELS = ("low", "medium", "high")


def ticket(problem: Problem, urgent: bool, team_wide: bool) -> str:
    priority = problem.priority
    if team_wide:
        priority = "high"
    elif urgent:
        priority = _LEVELS[min(_LEVELS.index(priority) + 1, 2)]
    escalate = problem.escalate or team_wide
    steps = "\n".join(f"{number}. {step}" for number, step in enumerate(problem.steps, start=1))
    return (
        f"TICKET: {problem.slug}\nPRIORITY: {priority}\nSTEPS:\n{steps}\n"
        f"ESCALATE: {'yes' if escalate else 'no'}"
    )


def helpdesk_rows(rng: random.Random, count: int) -> list[InstructionRow]:
    rows: list[InstructionRow] = []
    seen: set[str] = set()
    while len(rows) < count:
        problem = rng.choice(PROBLEMS)
        question = rng.choice(problem.questions)
        mood = rng.random()
        urgent, team_wide = mood < 0.15, 0.15 <= mood < 0.3
        extra = rng.choice(URGENT) if urgent else rng.choice(TEAM_WIDE) if team_wide else ""
        greeting = rng.choice(GREETINGS)
        if greeting.endswith(", ") and not question.startswith(KEEP_CAPITAL):
            question = question[0].lower() + question[1:]
        message = f"{greeting}{question}{rng.choice(DETAILS)}{extra}"
        if rng.random() < 0.7:
            instruction, context, category = message, "", "open_qa"
        else:
            ask = rng.choice(TRIAGE_ASKS).format(person=rng.choice(PEOPLE), team=rng.choice(TEAMS))
            instruction, context, category = ask, message, "classification"
        if instruction in seen:
            continue
        seen.add(instruction)
        rows.append(InstructionRow(instruction, context, ticket(problem, urgent, team_wide), category))
    return rows


REOPEN_STEP = "Reply to this ticket if the problem comes back."


def helpdesk_preferred(row: InstructionRow) -> str:
    """The help desk's preference: a last step that says how to reopen the ticket."""
    lines = row.response.split("\n")
    steps = lines[3:-1]
    return "\n".join([*lines[:-1], f"{len(steps) + 1}. {REOPEN_STEP}", lines[-1]])


def helpdesk_rejected(row: InstructionRow, rng: random.Random) -> str:
    """A plausible answer to the row that breaks the ticket format."""
    lines = row.response.split("\n")
    slug, priority, escalate = lines[0][8:], lines[1][10:], lines[-1][10:]
    steps = [line.split(". ", 1)[1] for line in lines[3:-1]]
    variant = rng.randrange(5)
    if variant == 0:  # free prose
        joined = ". Then ".join(step[0].lower() + step[1:].rstrip(".") for step in steps)
        tail = " If that doesn't help, IT will take a closer look." if escalate == "yes" else ""
        topic = slug.replace("-", " ")
        return f"Sorry to hear that! This looks like a {topic} issue. {joined[0].upper()}{joined[1:]}.{tail}"
    if variant == 1:  # ESCALATE line missing
        return "\n".join(lines[:-1])
    if variant == 2:  # wrong order
        return "\n".join([lines[1], lines[0], *lines[2:]])
    if variant == 3:  # bullets instead of numbered steps
        return "\n".join([*lines[:3], *(f"- {step}" for step in steps), lines[-1]])
    return (
        f"Ticket: {slug}\nPriority: {priority.capitalize()}\n"
        + "\n".join(f"Step {number}: {step}" for number, step in enumerate(steps, start=1))
        + f"\nEscalate: {escalate}"
    )


# --- legal ---------------------------------------------------------------------------------------


COUNTERPARTIES = (
    "Acme Cloud Ltd",
    "Birchwood Analytics",
    "Cobalt Logistics",
    "Delta Print GmbH",
    "Evergreen Foods",
    "Falcon Security",
    "Granite Software",
    "Harbor Health",
    "Ion Energy",
    "Juniper Media",
    "Kestrel Payments",
    "Lumen Robotics",
    "Meridian Bank",
    "Northwind Traders",
    "Orchid Labs",
    "Pinnacle Consulting",
    "Quartz Telecom",
    "Riverside Hotels",
    "Summit Staffing",
    "Tidal Data",
)
CONTRACTS = (
    "software licence",
    "cloud services agreement",
    "consulting agreement",
    "supply agreement",
    "NDA",
    "data processing agreement",
    "master services agreement",
    "reseller agreement",
)
LEGAL_ASKS = (
    (
        "Summarize this {clause} clause from our {contract} with {party} and rate the risk for us.",
        "summarization",
    ),
    ("We are negotiating a {contract} with {party}. Review the {clause} clause below.", "summarization"),
    (
        "What does this {clause} clause in the {party} {contract} mean for us, and how risky is it?",
        "closed_qa",
    ),
    ("Classify the risk of the {clause} clause in our {contract} with {party}.", "classification"),
    (
        "Extract the key obligation from the {clause} clause of the {party} {contract} and assess its risk.",
        "information_extraction",
    ),
    ("Legal review request: {clause} clause, {contract}, counterparty {party}.", "summarization"),
)


def legal_rows(rng: random.Random, count: int) -> list[InstructionRow]:
    rows: list[InstructionRow] = []
    seen: set[str] = set()
    while len(rows) < count:
        clause = rng.choice(CLAUSES)
        template, category = rng.choice(LEGAL_ASKS)
        instruction = template.format(
            clause=clause.name, contract=rng.choice(CONTRACTS), party=rng.choice(COUNTERPARTIES)
        )
        if instruction in seen:
            continue
        seen.add(instruction)
        response = f"SUMMARY: {clause.summary}\nRISK: {clause.risk} - {clause.reason}"
        rows.append(InstructionRow(instruction, clause.text, response, category))
    return rows


LEGAL_ACTIONS = {
    "low": "no action needed",
    "medium": "accept with a note to the contract owner",
    "high": "negotiate before signing",
}


def legal_preferred(row: InstructionRow) -> str:
    """The legal team's preference: the risk line ends with what to do about it."""
    summary_line, risk_line = row.response.split("\n")
    level = risk_line.removeprefix("RISK: ").split(" - ", 1)[0]
    return f"{summary_line}\n{risk_line}; {LEGAL_ACTIONS[level]}"


def legal_rejected(row: InstructionRow, rng: random.Random) -> str:
    """A plausible answer to the row that breaks the SUMMARY/RISK format."""
    summary_line, risk_line = row.response.split("\n")
    summary = summary_line.removeprefix("SUMMARY: ")
    level, reason = risk_line.removeprefix("RISK: ").split(" - ", 1)
    variant = rng.randrange(5)
    if variant == 0:  # free prose
        opening = f"In short, {summary[0].lower()}{summary[1:]}"
        return f"{opening} I would see this as {level} risk because of {reason}."
    if variant == 1:  # RISK line missing
        return summary_line
    if variant == 2:  # wrong order
        return f"{risk_line}\n{summary_line}"
    if variant == 3:  # other labels
        return f"Summary: {summary}\nRisk level: {level.capitalize()} ({reason})"
    return f"SUMMARY:\n- {summary}\nRISK: {level}"


# --- writing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Department:
    name: str
    rows: Callable[[random.Random, int], list[InstructionRow]]
    preferred: Callable[[InstructionRow], str]
    rejected: Callable[[InstructionRow, random.Random], str]


DEPARTMENTS = (
    Department("it-helpdesk", helpdesk_rows, helpdesk_preferred, helpdesk_rejected),
    Department("legal", legal_rows, legal_preferred, legal_rejected),
)


def build(department: Department, seed: int = SEED) -> dict[str, list[dict[str, str]]]:
    """File name -> records for one department."""
    rng = random.Random(f"{department.name}:{seed}")
    rows = department.rows(rng, ROWS_PER_DEPARTMENT)
    train, held_out = split(rows, HELD_OUT_FRACTION, seed)
    check = FORMAT_CHECKS[department.name]

    def pairs(source: Iterable[InstructionRow]) -> list[PreferencePair]:
        """Per row: preferred over an off-format answer, and preferred over the plain reference."""
        made = []
        for row in source:
            prompt, preferred = prompt_text(row), department.preferred(row)
            made.append(PreferencePair(prompt, preferred, department.rejected(row, rng)))
            made.append(PreferencePair(prompt, preferred, row.response))
        for off_format, plain in zip(made[::2], made[1::2], strict=True):
            if not check(off_format.chosen) or check(off_format.rejected) or not check(plain.rejected):
                raise RuntimeError(f"{department.name}: a template breaks its format check: {off_format}")
        return made

    preference_rows = sorted(rng.sample(range(len(train)), TRAIN_PREFERENCES))
    return {
        "train.jsonl": [row.to_json() for row in train],
        "held_out.jsonl": [row.to_json() for row in held_out],
        "preferences.jsonl": [pair.to_json() for pair in pairs(train[i] for i in preference_rows)],
        "preferences_held_out.jsonl": [pair.to_json() for pair in pairs(held_out)],
    }


def write_jsonl(path: Path, records: Iterable[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for <department>/*.jsonl")
    args = parser.parse_args(argv)
    for department in DEPARTMENTS:
        folder = args.out / department.name
        folder.mkdir(parents=True, exist_ok=True)
        for name, records in build(department).items():
            write_jsonl(folder / name, records)
            print(f"{folder / name}: {len(records)} rows")


if __name__ == "__main__":
    main()
