"""The committed demo data sets: regenerable, well-formed, format-checked, split cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters import make_datasets
from adapters.data import FORMAT_CHECKS, load_instructions, load_preferences, prompt_text

DATASETS = Path(make_datasets.__file__).resolve().parent / "datasets"
DEPARTMENTS = ["it-helpdesk", "legal"]
FILES = ["train.jsonl", "held_out.jsonl", "preferences.jsonl", "preferences_held_out.jsonl"]


def test_committed_files_equal_generator_output(tmp_path: Path) -> None:
    make_datasets.main(["--out", str(tmp_path)])
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.jsonl"))
    committed = sorted(p.relative_to(DATASETS) for p in DATASETS.rglob("*.jsonl"))
    assert generated == committed == sorted(Path(d, f) for d in DEPARTMENTS for f in FILES)
    for relative in generated:
        assert (tmp_path / relative).read_bytes() == (DATASETS / relative).read_bytes(), relative


@pytest.mark.parametrize("department", DEPARTMENTS)
def test_files_load_and_stay_small(department: str) -> None:
    folder = DATASETS / department
    train, held_out = load_instructions(folder / "train.jsonl"), load_instructions(folder / "held_out.jsonl")
    assert len(train) + len(held_out) >= 250
    assert 0.1 <= len(held_out) / (len(train) + len(held_out)) <= 0.2
    assert len(load_preferences(folder / "preferences.jsonl")) >= 100
    assert len(load_preferences(folder / "preferences_held_out.jsonl")) >= 20
    for name in FILES:
        assert (folder / name).stat().st_size < 500_000, name


@pytest.mark.parametrize("department", DEPARTMENTS)
def test_every_response_and_chosen_passes_and_the_rejected_are_plain_or_off_format(department: str) -> None:
    check = FORMAT_CHECKS[department]
    folder = DATASETS / department
    references: dict[str, str] = {}
    for name in ("train.jsonl", "held_out.jsonl"):
        rows = load_instructions(folder / name)
        assert [row.response for row in rows if not check(row.response)] == [], name
        references |= {prompt_text(row): row.response for row in rows}
    for name in ("preferences.jsonl", "preferences_held_out.jsonl"):
        pairs = load_preferences(folder / name)
        assert [p.chosen for p in pairs if not check(p.chosen)] == [], name
        # Each prompt twice: preferred over an off-format answer, and over the plain reference
        off_format, plain = pairs[::2], pairs[1::2]
        assert [p.rejected for p in off_format if check(p.rejected)] == [], name
        assert all(p.rejected == references[p.prompt] != p.chosen for p in plain), name
        assert [p.chosen for p in off_format] == [p.chosen for p in plain]


def test_the_preferred_answers_add_what_each_department_asked_for() -> None:
    helpdesk = load_preferences(DATASETS / "it-helpdesk" / "preferences.jsonl")
    assert all(p.chosen.split("\n")[-2].endswith(make_datasets.REOPEN_STEP) for p in helpdesk)
    legal = load_preferences(DATASETS / "legal" / "preferences.jsonl")
    assert all(p.chosen.endswith(tuple(make_datasets.LEGAL_ACTIONS.values())) for p in legal)


@pytest.mark.parametrize("department", DEPARTMENTS)
def test_instructions_unique_and_splits_do_not_overlap(department: str) -> None:
    folder = DATASETS / department
    train = load_instructions(folder / "train.jsonl")
    held_out = load_instructions(folder / "held_out.jsonl")
    instructions = [row.instruction for row in train + held_out]
    assert len(instructions) == len(set(instructions))
    assert {r.instruction for r in train}.isdisjoint(r.instruction for r in held_out)
    # Preference prompts follow the same split: held-out prompts are never trained on.
    train_prompts = {prompt_text(row) for row in train}
    held_prompts = {prompt_text(row) for row in held_out}
    assert {p.prompt for p in load_preferences(folder / "preferences.jsonl")} <= train_prompts
    assert {p.prompt for p in load_preferences(folder / "preferences_held_out.jsonl")} <= held_prompts


TICKET = "TICKET: vpn-connection\nPRIORITY: medium\nSTEPS:\n1. Restart.\n2. Sign in.\nESCALATE: no"
LEGAL = "SUMMARY: Either party may end the contract on notice.\nRISK: low - mutual right"


@pytest.mark.parametrize(
    ("department", "text", "ok"),
    [
        ("it-helpdesk", TICKET, True),
        ("it-helpdesk", TICKET + "\n", True),
        ("it-helpdesk", TICKET.replace("2. Sign", "3. Sign"), False),
        ("it-helpdesk", TICKET.replace("medium", "urgent"), False),
        ("it-helpdesk", TICKET.replace("\nESCALATE: no", ""), False),
        ("it-helpdesk", TICKET.replace("TICKET: vpn-connection", "TICKET: VPN issue"), False),
        ("it-helpdesk", "Sure! " + TICKET, False),
        ("it-helpdesk", TICKET.replace("STEPS:\n", "STEPS:\n\n"), False),
        ("legal", LEGAL, True),
        ("legal", LEGAL.replace("low - ", "medium - "), True),
        ("legal", LEGAL.replace("low - mutual right", "low"), False),
        ("legal", "\n".join(reversed(LEGAL.split("\n"))), False),
        ("legal", LEGAL + "\nNOTE: more", False),
        ("legal", LEGAL.replace("SUMMARY: ", "Summary: "), False),
        ("legal", LEGAL.replace("low", "severe"), False),
    ],
)
def test_format_checks(department: str, text: str, ok: bool) -> None:
    assert FORMAT_CHECKS[department](text) is ok
