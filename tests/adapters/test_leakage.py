"""The held-out sets are unseen: no held-out answer, request or source text is in training.

Checked exactly and after normalising (case, whitespace, punctuation, greeting words), by group
(problem, clause), and by the nearest-training-answer copy baseline: answering each held-out
request with the response of the most similar training request reproduces (almost) none of the
held-out references. The figures are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from adapters import content_helpdesk, content_legal
from adapters.data import InstructionRow, load_instructions, prompt_text, read_requests

DATASETS = Path(__file__).resolve().parents[2] / "adapters" / "datasets"
DEPARTMENTS = ["it-helpdesk", "legal"]
GREETING = re.compile(r"^(?:hi|hello|hey|good (?:morning|afternoon)|quick question|help)\b[\s,.!:]*")


def normal(text: str) -> str:
    """Lower case, words only, greeting words at the start of each line dropped."""
    lines = [GREETING.sub("", line.strip().lower()) for line in text.splitlines()]
    return " ".join(re.findall(r"\w+", " ".join(lines)))


def splits(department: str) -> tuple[list[InstructionRow], list[InstructionRow]]:
    folder = DATASETS / department
    return load_instructions(folder / "train.jsonl"), load_instructions(folder / "held_out.jsonl")


def words(text: str) -> Counter[str]:
    return Counter(re.findall(r"\w+", text.lower()))


def similarity(a: Counter[str], b: Counter[str]) -> float:
    """Cosine similarity of word counts."""
    dot = sum(count * b[word] for word, count in a.items())
    norm = (sum(v * v for v in a.values()) * sum(v * v for v in b.values())) ** 0.5
    return dot / norm if norm else 0.0


def copy_baseline(train: list[InstructionRow], requests: list[InstructionRow]) -> list[str]:
    """For each request, the response of the most similar training request."""
    vectors = [words(prompt_text(row)) for row in train]
    answers = []
    for row in requests:
        target = words(prompt_text(row))
        best = max(range(len(train)), key=lambda i: similarity(target, vectors[i]))
        answers.append(train[best].response)
    return answers


@pytest.mark.parametrize("department", DEPARTMENTS)
def test_no_held_out_answer_request_or_context_is_in_training(department: str) -> None:
    train, held_out = splits(department)
    for view in (str, normal):
        responses = {view(row.response) for row in train}
        contexts = {view(row.context) for row in train if row.context}
        prompts = {view(prompt_text(row)) for row in train}
        assert [r.response for r in held_out if view(r.response) in responses] == [], view
        assert [r.context for r in held_out if r.context and view(r.context) in contexts] == [], view
        assert [r.context for r in held_out if r.context and view(r.context) in responses] == [], view
        assert [r.instruction for r in held_out if view(prompt_text(r)) in prompts] == [], view
    assert {row.group for row in train}.isdisjoint(row.group for row in held_out)
    assert all(row.group for row in train + held_out)


@pytest.mark.parametrize("department", DEPARTMENTS)
def test_no_held_out_source_text_is_inside_any_training_request(department: str) -> None:
    """The held-out groups' questions or clause texts, normalised, occur in no training prompt."""
    train, held_out = splits(department)
    held_groups = {row.group for row in held_out}
    if department == "it-helpdesk":
        numbered: Counter[str] = Counter()
        sources = []
        for problem in content_helpdesk.PROBLEMS:
            numbered[problem.slug] += 1
            if f"{problem.slug}/{numbered[problem.slug]}" in held_groups:
                sources += [normal(q) for q in problem.questions] + [normal(s) for s in problem.steps]
    else:
        numbered = Counter()
        sources = []
        for clause in content_legal.CLAUSES:
            numbered[clause.name] += 1
            if f"{clause.name}/{numbered[clause.name]}" in held_groups:
                sources += [normal(clause.text), normal(clause.summary), normal(clause.reason)]
    assert len(sources) >= 6 * 3
    training_text = [normal(prompt_text(row) + "\n" + row.response) for row in train]
    assert [s for s in sources if any(s in text for text in training_text)] == []


@pytest.mark.parametrize("department", DEPARTMENTS)
def test_independent_requests_are_not_in_the_generated_data(department: str) -> None:
    train, held_out = splits(department)
    requests, _ = read_requests(DATASETS / department / "held_out_independent.jsonl")
    generated = {normal(prompt_text(row)) for row in train + held_out}
    contexts = {normal(row.context) for row in train + held_out if row.context}
    assert [r.instruction for r in requests if normal(prompt_text(r)) in generated] == []
    assert [r.context for r in requests if r.context and normal(r.context) in contexts] == []


@pytest.mark.parametrize("department", DEPARTMENTS)
def test_copying_the_nearest_training_answer_reproduces_almost_no_held_out_reference(department: str) -> None:
    train, held_out = splits(department)
    copied = copy_baseline(train, held_out)
    exact = sum(a == row.response for a, row in zip(copied, held_out, strict=True))
    normalised = sum(normal(a) == normal(row.response) for a, row in zip(copied, held_out, strict=True))
    print(
        f"\n{department}: nearest-training-answer copy reproduces {exact}/{len(held_out)} held-out "
        f"references exactly ({normalised} after normalising)"
    )
    assert normalised <= 0.02 * len(held_out)
