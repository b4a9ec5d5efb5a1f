"""The committed demo data sets: regenerable, well-formed, format-checked, split by group three ways."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from adapters import content_helpdesk, content_legal, make_datasets
from adapters.data import FORMAT_CHECKS, load_instructions, load_preferences, prompt_text, read_requests

DATASETS = Path(make_datasets.__file__).resolve().parent / "datasets"
DEPARTMENTS = ["it-helpdesk", "legal"]
GENERATED = [
    "train.jsonl",
    "held_out.jsonl",
    "preferences.jsonl",
    "preferences_reward.jsonl",
    "preferences_held_out.jsonl",
]
HAND_WRITTEN = ["held_out_independent.jsonl", "off_domain.jsonl"]
SLUGS = {p.slug for p in content_helpdesk.PROBLEMS}
CLAUSE_TYPES = {c.name for c in content_legal.CLAUSES}
LEVELS = {"low", "medium", "high"}


def test_committed_files_equal_generator_output(tmp_path: Path) -> None:
    make_datasets.main(["--out", str(tmp_path)])
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.jsonl"))
    expected = [Path(d, f) for d in DEPARTMENTS for f in GENERATED] + [Path("general", "replay.jsonl")]
    assert generated == sorted(expected)
    for relative in generated:
        assert (tmp_path / relative).read_bytes() == (DATASETS / relative).read_bytes(), relative
    committed = {p.relative_to(DATASETS) for p in DATASETS.rglob("*.jsonl")}
    hand = {Path(d, f) for d in DEPARTMENTS for f in HAND_WRITTEN} | {Path("general", "forgetting.jsonl")}
    assert committed == set(expected) | hand  # nothing stale left behind


@pytest.mark.parametrize("department", DEPARTMENTS)
def test_files_load_and_stay_small(department: str) -> None:
    folder = DATASETS / department
    train, held_out = load_instructions(folder / "train.jsonl"), load_instructions(folder / "held_out.jsonl")
    assert len(train) + len(held_out) >= 250
    assert 0.1 <= len(held_out) / (len(train) + len(held_out)) <= 0.25
    assert len(load_preferences(folder / "preferences.jsonl")) >= 150
    assert len(load_preferences(folder / "preferences_reward.jsonl")) >= 150
    assert len(load_preferences(folder / "preferences_held_out.jsonl")) >= 80
    for name in GENERATED + HAND_WRITTEN:
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
    for name in ("preferences.jsonl", "preferences_reward.jsonl", "preferences_held_out.jsonl"):
        pairs = load_preferences(folder / name)
        assert [p.chosen for p in pairs if not check(p.chosen)] == [], name
        # Each prompt twice: preferred over an off-format answer, and over the plain reference
        off_format, plain = pairs[::2], pairs[1::2]
        assert [p.rejected for p in off_format if check(p.rejected)] == [], name
        assert all(p.rejected == references[p.prompt] != p.chosen for p in plain), name
        assert [p.chosen for p in off_format] == [p.chosen for p in plain]


def _extra(department: str, chosen: str, reference: str) -> str:
    """What the preferred answer adds to the reference (the reopen step, the risk line's action)."""
    if department == "legal":
        return chosen.removeprefix(reference).strip(" ;.").lower()
    added = [line for line in chosen.split("\n") if line not in reference.split("\n")]
    return re.sub(r"^\d+\. ", "", added[-1]).lower()


@pytest.mark.parametrize("department", DEPARTMENTS)
def test_the_preferred_answers_vary_in_wording_and_held_out_wordings_are_unseen(department: str) -> None:
    folder = DATASETS / department
    wordings: dict[str, Counter[str]] = {}
    for name in ("preferences.jsonl", "preferences_reward.jsonl", "preferences_held_out.jsonl"):
        pairs = load_preferences(folder / name)[1::2]  # preferred over the plain reference
        wordings[name] = Counter(_extra(department, p.chosen, p.rejected) for p in pairs)
    for name in ("preferences.jsonl", "preferences_reward.jsonl"):
        # no one wording (hence no one suffix regex) accounts for most preferred answers
        assert max(wordings[name].values()) <= 0.5 * wordings[name].total(), wordings[name].most_common(3)
        assert len(wordings[name]) >= 6
    assert len(wordings["preferences_held_out.jsonl"]) >= 2
    trained = set(wordings["preferences.jsonl"]) | set(wordings["preferences_reward.jsonl"])
    assert trained.isdisjoint(wordings["preferences_held_out.jsonl"])


@pytest.mark.parametrize("department", DEPARTMENTS)
def test_instructions_unique_and_preferences_split_three_ways_by_group(department: str) -> None:
    folder = DATASETS / department
    train = load_instructions(folder / "train.jsonl")
    held_out = load_instructions(folder / "held_out.jsonl")
    instructions = [row.instruction for row in train + held_out]
    assert len(instructions) == len(set(instructions))
    group_of = {prompt_text(row): row.group for row in train + held_out}
    groups = {
        name: {group_of[p.prompt] for p in load_preferences(folder / f"{name}.jsonl")}
        for name in ("preferences", "preferences_reward", "preferences_held_out")
    }
    train_groups, held_groups = {r.group for r in train}, {r.group for r in held_out}
    assert groups["preferences"] | groups["preferences_reward"] <= train_groups
    assert groups["preferences_held_out"] == held_groups
    assert groups["preferences"].isdisjoint(groups["preferences_reward"])
    assert min(len(groups["preferences"]), len(groups["preferences_reward"])) >= 0.4 * len(train_groups)


@pytest.mark.parametrize("department", DEPARTMENTS)
def test_generated_rows_carry_expected_fields_that_match_their_reference(department: str) -> None:
    folder = DATASETS / department
    for row in load_instructions(folder / "train.jsonl") + load_instructions(folder / "held_out.jsonl"):
        assert row.expected is not None
        lines = dict(line.split(": ", 1) for line in row.response.split("\n") if ": " in line)
        if department == "it-helpdesk":
            assert row.expected["category"] == lines["TICKET"] == row.group.split("/")[0]
            assert row.expected["priority"] == lines["PRIORITY"]
            assert row.expected["escalate"] == lines["ESCALATE"]
            steps = row.response.lower()
            assert all(any(w in steps for w in k.split("|")) for k in row.expected["step_keywords"])
        else:
            assert row.expected["risk"] == lines["RISK"].split(" - ")[0]
            assert row.expected["clause_type"] == row.group.split("/")[0]


@pytest.mark.parametrize("department", DEPARTMENTS)
def test_independent_requests_have_exact_expected_values(department: str) -> None:
    rows, skipped = read_requests(DATASETS / department / "held_out_independent.jsonl")
    assert skipped == [] and len(rows) >= 40
    records = [json.loads(line) for line in (DATASETS / department / "held_out_independent.jsonl").open()]
    assert len({r["id"] for r in records}) == len(records)
    languages = Counter(r["lang"] for r in records)
    assert len(languages) >= 5 and languages["en"] <= 0.7 * len(records)
    for row in rows:
        assert row.expected is not None
        if department == "it-helpdesk":
            assert set(row.expected) == {"category", "priority", "escalate", "step_keywords"}
            assert row.expected["category"] in SLUGS and row.expected["priority"] in LEVELS
            assert row.expected["escalate"] in {"yes", "no"} and row.expected["step_keywords"]
        else:
            assert set(row.expected) == {"risk", "clause_type"}
            assert row.expected["risk"] in LEVELS and row.expected["clause_type"] in CLAUSE_TYPES
    covered = {row.expected["category" if department == "it-helpdesk" else "clause_type"] for row in rows}
    assert covered == (SLUGS if department == "it-helpdesk" else CLAUSE_TYPES)


def test_forgetting_suite_and_off_domain_probes() -> None:
    records = [json.loads(line) for line in (DATASETS / "general" / "forgetting.jsonl").open()]
    assert len(records) >= 100 and len({r["id"] for r in records}) == len(records)
    assert {r["kind"] for r in records} == {"fact", "arithmetic", "instruction", "refusal"}
    for record in records:
        assert record["match"] in {"contains", "exact", "regex", "refusal"}, record
        assert record["accept"] or record["match"] == "refusal", record
        if record["match"] == "regex":
            [re.compile(pattern) for pattern in record["accept"]]
    for department in DEPARTMENTS:
        probes, _ = read_requests(DATASETS / department / "off_domain.jsonl")
        assert len(probes) >= 15


def test_replay_rows_are_general_and_disjoint_from_the_forgetting_suite() -> None:
    replay = load_instructions(DATASETS / "general" / "replay.jsonl")
    assert len(replay) >= 200 and len({r.instruction for r in replay}) == len(replay)
    forgetting = [
        json.loads(line)["instruction"] for line in (DATASETS / "general" / "forgetting.jsonl").open()
    ]

    def normal(text: str) -> str:
        return " ".join(re.findall(r"\w+", text.lower()))

    assert {normal(r.instruction) for r in replay}.isdisjoint(normal(f) for f in forgetting)
    for department in DEPARTMENTS:
        assert all(not FORMAT_CHECKS[department](row.response) for row in replay)


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
