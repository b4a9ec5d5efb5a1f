"""The forgetting suite and the off-domain probe: what an adapter still does outside its department.

`adapters/datasets/general/forgetting.jsonl` holds general prompts with checkable answers:

    {"id": "capital-fr", "instruction": "What is the capital of France?", "kind": "fact",
     "accept": ["Paris"], "match": "contains"}

Scoring is exact, with no judge: `contains` (an accepted string appears, case-insensitive, on
word boundaries), `exact` (the whole answer, without case, surrounding punctuation or a final
period, is an accepted string), `regex` (an accepted pattern matches somewhere, case-insensitive),
`refusal` (the answer declines or says the question has no answer: REFUSAL, or an accepted
string). The gate compares each adapter with the base model on the same prompts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .stats import difference, rate

MATCHES = ("contains", "exact", "regex", "refusal")
MAX_DROP = 0.05  # the gate: an adapter loses at most 5 points against the base
REFUSAL = re.compile(
    r"\b(i (?:can(?:no|')t|am (?:not|unable)|do(?:n't| not) know|'m (?:not|unable|sorry))|"
    r"(?:cannot|can't|unable to) (?:answer|help|provide|determine|be answered)|sorry|"
    r"(?:does|do|did) not (?:exist|make sense)|doesn't (?:exist|make sense)|no (?:such|one|way to know)|"
    r"not (?:possible|a real|real|known|defined|meaningful)|there is no|nonsens|fictional|impossible|"
    r"as an ai)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Probe:
    id: str
    instruction: str
    kind: str
    accept: tuple[str, ...]
    match: str


def load_probes(path: Path) -> list[Probe]:
    """The forgetting suite; a row with an unknown `match` or no `accept` (except refusals) is an error."""
    probes = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        match = record.get("match", "contains")
        accept = tuple(record.get("accept") or ())
        if match not in MATCHES or (not accept and match != "refusal"):
            raise ValueError(f"{path}:{number}: match {match!r} with accept {list(accept)} cannot be scored")
        probes.append(
            Probe(str(record.get("id", number)), record["instruction"], record.get("kind", ""), accept, match)
        )
    return probes


def _plain(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .!?\"'`*")


def correct(probe: Probe, answer: str) -> bool:
    """Whether `answer` passes `probe` by its `match` rule (see the module's doc)."""
    if probe.match == "exact":
        return _plain(answer) in {_plain(a) for a in probe.accept}
    if probe.match == "regex":
        return any(re.search(a, answer, re.IGNORECASE) for a in probe.accept)
    words = [re.escape(a.lower()) for a in probe.accept]
    found = any(re.search(rf"(?<!\w){w}(?!\w)", answer.lower()) for w in words)
    if probe.match == "refusal":
        return found or REFUSAL.search(answer) is not None
    return found


def suite_score(probes: list[Probe], answers: list[str]) -> dict[str, Any]:
    """The share passed, overall and per kind, each with its 95% Wilson interval."""
    passed = [correct(p, a) for p, a in zip(probes, answers, strict=True)]
    kinds: dict[str, list[bool]] = {}
    for probe, ok in zip(probes, passed, strict=True):
        kinds.setdefault(probe.kind or "other", []).append(ok)
    return {
        "overall": rate(sum(passed), len(passed)),
        "per_kind": {kind: rate(sum(v), len(v)) for kind, v in sorted(kinds.items())},
        "passed": passed,
    }


def gate(base: dict[str, Any], adapter: dict[str, Any], max_drop: float = MAX_DROP) -> dict[str, Any]:
    """Adapter minus base on the suite, with an interval; passes when the point loss is within `max_drop`.

    `confident` adds whether the interval's lower end also stays above -max_drop (with ~100
    prompts it rarely does: the interval is about +-13 points wide).
    """
    b, a = base["overall"], adapter["overall"]
    diff = difference(a["k"], a["n"], b["k"], b["n"])
    return diff | {
        "max_drop": max_drop,
        "passed": diff["diff"] >= -max_drop,
        "confident": diff["low"] >= -max_drop,
    }


def off_domain_summary(
    answers: list[str], check: Any, prompts: list[str], samples: int = 3
) -> dict[str, Any]:
    """Off-topic requests answered in the department's format (they should not be), and samples."""
    in_format = [bool(check(a)) for a in answers] if check is not None else []
    return {
        "in_department_format": rate(sum(in_format), len(in_format)) if in_format else None,
        "samples": [
            {"prompt": p, "answer": a} for p, a in list(zip(prompts, answers, strict=True))[:samples]
        ],
    }
