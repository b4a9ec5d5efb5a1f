"""Field-level accuracy: the department's answer parsed into fields, each compared exactly.

Format compliance says an answer *looks* like a ticket; the fields say whether it is the *right*
ticket. Parsers are lenient about layout (a field is read from its labelled line wherever it is,
so a wrongly ordered answer still scores the fields it got right) and strict about values:
exact, case-insensitive match of the value.

    it-helpdesk  category (the TICKET slug), priority, escalate, steps (every `step_keywords`
                 entry is mentioned in the steps; an entry "reboot|restart" accepts either word)
    legal        risk (the level on the RISK line), clause_type (a `CLAUSE:` line if the format
                 has one, else the clause the answer speaks of, by the keywords in CLAUSE_WORDS)

A row's `expected` object gives the true values; rows without one (the generated held-out set
before it carried them) take them from the parsed reference answer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .stats import rate

Parsed = dict[str, Any]


def _line(label: str, text: str) -> str | None:
    match = re.search(rf"^\s*{label}\s*:\s*(.*?)\s*$", text, re.IGNORECASE | re.MULTILINE)
    return match.group(1) if match else None


def parse_ticket(text: str) -> Parsed:
    """TICKET slug, PRIORITY, ESCALATE and the numbered steps' text, from wherever they appear."""
    slug = _line("TICKET", text)
    priority = _line("PRIORITY", text)
    escalate = _line("ESCALATE", text)
    steps = re.findall(r"^\s*\d+[.)]\s*(.+)$", text, re.MULTILINE)
    return {
        "category": slug.split()[0].lower() if slug else None,
        "priority": priority.split()[0].lower().strip(".,") if priority else None,
        "escalate": escalate.split()[0].lower().strip(".,") if escalate else None,
        "steps": "\n".join(steps),
    }


# The clause types of the legal department (adapters/content_legal.py) and words that name them,
# checked in this order (the first type with a word in the answer wins).
CLAUSE_WORDS: dict[str, tuple[str, ...]] = {
    "indemnity": (
        "indemn",
        "hold harmless",
        "covers us against",
        "cover all of",
        "covers the other",
        "cover the other",
    ),
    "limitation of liability": ("liability", "liable", " cap ", "capped"),
    "confidentiality": ("confidential", "secret", "non-disclosure"),
    "data processing": ("personal data", "data process", "processor", "gdpr", "breach notification"),
    "governing law": (
        "governing law",
        "governed by",
        "law applies",
        "law of",
        "courts",
        "arbitration",
        "jurisdiction",
    ),
    "intellectual property": ("intellectual property", " ip ", "licence", "license", "copyright", "owns"),
    "non-compete": (
        "non-compete",
        "compete",
        "competitor",
        "solicit",
        "poach",
        "similar provider",
        "hire any",
    ),
    "auto-renewal": ("renew", "renewal"),
    "payment terms": ("invoice", "payment", " pay ", "paid", "late fee", "interest", "price"),
    "warranty": ("warrant", "defect", "as is", "fit for", "skill and care", "promises to perform"),
    "assignment": ("assign", "subcontract", "hand over", "transfer the contract", "transfer this"),
    "termination": ("terminat", "end the contract", "ends the contract", "notice", "cancel"),
}


def clause_type_of(text: str) -> str | None:
    """The clause type an answer speaks of: its `CLAUSE:` line, else the first CLAUSE_WORDS match."""
    declared = _line("CLAUSE", text)
    if declared:
        return declared.lower().rstrip(".")
    lowered = f" {text.lower()} "
    for clause, words in CLAUSE_WORDS.items():
        if any(word in lowered for word in words):
            return clause
    return None


def parse_legal(text: str) -> Parsed:
    """RISK level (the first word of the RISK line) and the clause type (see `clause_type_of`)."""
    risk = _line("RISK", text)
    level = re.match(r"\s*(low|medium|high)\b", risk, re.IGNORECASE) if risk else None
    summary = _line("SUMMARY", text) or ""
    clause = clause_type_of(text if _line("CLAUSE", text) else summary or text)
    return {"risk": level.group(1).lower() if level else None, "clause_type": clause}


def _steps_mention(keywords: list[str], steps: str) -> bool:
    lowered = steps.lower()
    return bool(lowered) and all(any(w.strip().lower() in lowered for w in k.split("|")) for k in keywords)


def _normal(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value).strip().lower()


def ticket_fields(parsed: Parsed, expected: Mapping[str, Any]) -> dict[str, bool]:
    out = {
        name: _normal(parsed.get(name)) == _normal(expected[name])
        for name in ("category", "priority", "escalate")
        if expected.get(name) is not None
    }
    if expected.get("step_keywords"):
        out["steps"] = _steps_mention(list(expected["step_keywords"]), parsed.get("steps") or "")
    return out


def legal_fields(parsed: Parsed, expected: Mapping[str, Any]) -> dict[str, bool]:
    return {
        name: _normal(parsed.get(name)) == _normal(expected[name])
        for name in ("risk", "clause_type")
        if expected.get(name) is not None
    }


# format check name -> (parser, scorer, the fields it scores)
FIELD_SCORERS: dict[str, tuple[Callable[[str], Parsed], Callable[..., dict[str, bool]], tuple[str, ...]]] = {
    "it-helpdesk": (parse_ticket, ticket_fields, ("category", "priority", "escalate", "steps")),
    "legal": (parse_legal, legal_fields, ("risk", "clause_type")),
}


def field_names(check: str | None) -> tuple[str, ...]:
    return FIELD_SCORERS[check][2] if check in FIELD_SCORERS else ()


def expected_from_reference(check: str, reference: str) -> dict[str, Any]:
    """The true field values read from a reference answer (for rows without `expected`)."""
    parsed = FIELD_SCORERS[check][0](reference)
    return {k: v for k, v in parsed.items() if k != "steps" and v is not None}


def score_fields(check: str | None, answer: str, expected: Mapping[str, Any] | None) -> dict[str, bool]:
    """Per field: did the answer get it right (fields the row has no expected value for are left out).

    `all` is true when every scored field is right (a row with no scored field gets none).
    """
    if check not in FIELD_SCORERS or not expected:
        return {}
    parser, scorer, _ = FIELD_SCORERS[check]
    out = scorer(parser(answer), expected)
    if out:
        out["all"] = all(out.values())
    return out


def constant_answer(
    check: str | None, train: Sequence[Mapping[str, Any] | None], rows: Sequence[Mapping[str, Any] | None]
) -> dict[str, dict[str, Any]]:
    """The cheapest field baseline: always answer the value most common in training, per field.

    An adapter that picks one level for every clause scores this much without reading anything.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in field_names(check):
        seen = Counter(e[name] for e in train if e and isinstance(e.get(name), str))
        if not seen:
            continue
        value = seen.most_common(1)[0][0]
        hits = [e[name] == value for e in rows if e and name in e]
        if hits:
            out[name] = {"value": value} | rate(sum(hits), len(hits))
    return out
