"""Training data for the adapter factory: instruction rows, preference pairs, splits, format checks.

Instruction data uses the databricks-dolly-15k schema, one row per line (JSONL) or per CSV record:

    {"instruction": "...", "context": "...", "response": "...", "category": "open_qa"}

`context` may be empty or absent; the other three fields must be non-empty strings, and `category`
one of dolly's eight. Preference pairs (JSONL) carry `prompt`, `chosen` and `rejected`, where
`prompt` is the user turn as `prompt_text` renders it. Any malformed row raises `DataError`, whose
message names the file, the line and the problem.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

CATEGORIES = frozenset(
    {
        "open_qa",
        "closed_qa",
        "information_extraction",
        "summarization",
        "brainstorming",
        "classification",
        "general_qa",
        "creative_writing",
    }
)
INSTRUCTION_FIELDS = ("instruction", "context", "response", "category")
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")


class DataError(ValueError):
    """A data file that cannot be used; the message reads `FILE:LINE: problem`."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class InstructionRow:
    instruction: str
    context: str
    response: str
    category: str

    @property
    def key(self) -> str:
        """What identifies the row's prompt (used by `split`)."""
        return prompt_text(self)

    def to_json(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in INSTRUCTION_FIELDS}


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str

    @property
    def key(self) -> str:
        return self.prompt

    def to_json(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in PREFERENCE_FIELDS}


# --- loading -------------------------------------------------------------------------------------


def load_instructions(path: str | Path) -> list[InstructionRow]:
    """Rows from a `.jsonl` or `.csv` file in the dolly schema."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = _jsonl_records(path)
    elif suffix == ".csv":
        records = _csv_records(path)
    else:
        raise DataError(path, None, f"unknown file type {suffix!r} (expected .jsonl or .csv)")
    rows = [_instruction_row(path, line, record) for line, record in records]
    if not rows:
        raise DataError(path, None, "no rows")
    return rows


def load_preferences(path: str | Path) -> list[PreferencePair]:
    """Preference pairs from a `.jsonl` file."""
    path = Path(path)
    pairs = []
    for line, record in _jsonl_records(path):
        values = _required_strings(path, line, record, PREFERENCE_FIELDS)
        pairs.append(PreferencePair(**values))
    if not pairs:
        raise DataError(path, None, "no rows")
    return pairs


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(path, number, f"not UTF-8 ({exc.reason})") from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(path, number, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(record, dict):
                raise DataError(path, number, f"expected a JSON object, got {type(record).__name__}")
            yield number, record


def _csv_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                return
            missing = [name for name in ("instruction", "response", "category") if name not in header]
            if missing:
                raise DataError(path, 1, f"CSV header lacks column(s) {', '.join(missing)}")
            while True:
                start = reader.line_num + 1
                fields = next(reader, None)
                if fields is None:
                    return
                if not fields:
                    continue
                if len(fields) > len(header):
                    raise DataError(
                        path, start, f"{len(fields)} fields, more than the header's {len(header)}"
                    )
                yield start, dict(zip(header, fields, strict=False))
        except csv.Error as exc:
            raise DataError(path, reader.line_num, f"invalid CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise DataError(path, reader.line_num + 1, f"not UTF-8 ({exc.reason})") from None


def _instruction_row(path: Path, line: int, record: dict[str, Any]) -> InstructionRow:
    values = _required_strings(path, line, record, ("instruction", "response", "category"))
    context = record.get("context", "")
    if context is None:
        context = ""
    if not isinstance(context, str):
        raise DataError(path, line, f"field 'context' must be a string, got {type(context).__name__}")
    if values["category"] not in CATEGORIES:
        raise DataError(
            path, line, f"unknown category {values['category']!r} (expected one of {sorted(CATEGORIES)})"
        )
    return InstructionRow(context=context, **values)


def _required_strings(path: Path, line: int, record: dict[str, Any], names: Sequence[str]) -> dict[str, str]:
    values = {}
    for name in names:
        if name not in record:
            raise DataError(path, line, f"missing field {name!r}")
        value = record[name]
        if not isinstance(value, str):
            raise DataError(path, line, f"field {name!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise DataError(path, line, f"field {name!r} is empty")
        values[name] = value
    return values


# --- splitting and rendering ---------------------------------------------------------------------


class _Keyed(Protocol):
    @property
    def key(self) -> str: ...


T = TypeVar("T", bound=_Keyed)


def split(rows: Sequence[T], held_out_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, held_out): `round(len(rows) * held_out_fraction)` rows held out, chosen by seed.

    Each row is ranked by a hash of the seed and its prompt, so the split depends only on the seed
    and the rows (not on Python's hash seed), and adding rows rarely moves existing ones. Both
    parts keep the input order.
    """
    if not 0.0 <= held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    count = round(len(rows) * held_out_fraction)

    def rank(index: int) -> tuple[bytes, int]:
        digest = hashlib.sha256(f"{seed}\0{rows[index].key}".encode()).digest()
        return digest, index

    held = set(sorted(range(len(rows)), key=rank)[:count])
    train = [row for index, row in enumerate(rows) if index not in held]
    held_out = [row for index, row in enumerate(rows) if index in held]
    return train, held_out


def prompt_text(row: InstructionRow) -> str:
    """The user turn: the instruction, then the context (if any) as a block of its own."""
    if not row.context.strip():
        return row.instruction
    return f"{row.instruction}\n\nContext:\n{row.context}"


def to_messages(row: InstructionRow) -> list[dict[str, str]]:
    """Chat messages for the base model's own chat template; no system turn is added here."""
    return [
        {"role": "user", "content": prompt_text(row)},
        {"role": "assistant", "content": row.response},
    ]


# --- format checks -------------------------------------------------------------------------------

_TICKET = re.compile(
    r"TICKET: [a-z0-9]+(?:-[a-z0-9]+)*\n"
    r"PRIORITY: (?:low|medium|high)\n"
    r"STEPS:\n"
    r"(?P<steps>(?:\d+\. \S[^\n]*\n)+)"
    r"ESCALATE: (?:yes|no)"
)
_LEGAL = re.compile(r"SUMMARY: \S[^\n]*\nRISK: (?:low|medium|high) - \S[^\n]*")


def check_ticket(text: str) -> bool:
    """The it-helpdesk format: TICKET, PRIORITY, STEPS numbered 1..n, ESCALATE, nothing else."""
    match = _TICKET.fullmatch(text.strip())
    if match is None:
        return False
    numbers = [int(step.split(".", 1)[0]) for step in match["steps"].splitlines()]
    return numbers == list(range(1, len(numbers) + 1))


def check_legal(text: str) -> bool:
    """The legal format: one `SUMMARY: ...` line, then one `RISK: <level> - <reason>` line."""
    return _LEGAL.fullmatch(text.strip()) is not None


FORMAT_CHECKS: dict[str, Callable[[str], bool]] = {
    "it-helpdesk": check_ticket,
    "legal": check_legal,
}
