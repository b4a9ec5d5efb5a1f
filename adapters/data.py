"""Training data for the adapter factory: instruction rows, preference pairs, splits, format checks.

Instruction data uses the databricks-dolly-15k schema, one row per line (JSONL) or per CSV record:

    {"instruction": "...", "context": "...", "response": "...", "category": "open_qa"}

`instruction` and `response` must be non-empty strings. `context` may be empty or absent.
`category` may be absent (then `DEFAULT_CATEGORY`); when given it is one of dolly's eight. Two
optional fields are read from JSONL and ignored by dolly tools: `group` (rows of one group, e.g. one
problem or one clause, are never split between train and held-out) and `expected` (the true field
values of the answer, for exact field scoring). Other fields are ignored. Preference pairs (JSONL)
carry `prompt`, `chosen` and `rejected`, where `prompt` is the user turn as `prompt_text` renders
it. A malformed row raises `DataError`, whose message names the file, the line and the problem;
with `skip_bad_rows` such rows are skipped and returned, so the caller can report how many.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
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
DEFAULT_CATEGORY = "general_qa"
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
    group: str = ""
    # The answer's true field values (scored exactly by the evaluation); not part of equality.
    expected: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def key(self) -> str:
        """What `split` keeps together: the row's group, else its prompt."""
        return self.group or prompt_text(self)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {name: getattr(self, name) for name in INSTRUCTION_FIELDS}
        if self.group:
            record["group"] = self.group
        if self.expected is not None:
            record["expected"] = dict(self.expected)
        return record


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

Record = dict[str, Any] | DataError


def read_instructions(
    path: str | Path, *, skip_bad_rows: bool = False
) -> tuple[list[InstructionRow], list[DataError]]:
    """(rows, skipped) from a `.jsonl` or `.csv` file in the dolly schema.

    Without `skip_bad_rows` the first bad row raises its `DataError`; with it, bad rows are left
    out and returned. File-level problems (unknown type, CSV header, no usable row) always raise.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = _jsonl_records(path)
    elif suffix == ".csv":
        records = _csv_records(path)
    else:
        raise DataError(path, None, f"unknown file type {suffix!r} (expected .jsonl or .csv)")
    return _collect(path, records, _instruction_row, skip_bad_rows)


def load_instructions(path: str | Path, *, skip_bad_rows: bool = False) -> list[InstructionRow]:
    """Rows from a `.jsonl` or `.csv` file in the dolly schema (see `read_instructions`)."""
    return read_instructions(path, skip_bad_rows=skip_bad_rows)[0]


def read_requests(
    path: str | Path, *, skip_bad_rows: bool = False
) -> tuple[list[InstructionRow], list[DataError]]:
    """(rows, skipped) from a `.jsonl` file of requests whose `response` is optional (empty when absent):
    the independent held-out requests (scored by their `expected` fields) and off-domain probes."""
    path = Path(path)

    def request(path: Path, line: int, record: dict[str, Any]) -> InstructionRow:
        return _instruction_row(
            path, line, {"response": "-"} | record | {"response": record.get("response") or "-"}
        )

    rows, skipped = _collect(path, _jsonl_records(path), request, skip_bad_rows)
    return [replace(row, response="" if row.response == "-" else row.response) for row in rows], skipped


def read_preferences(
    path: str | Path, *, skip_bad_rows: bool = False
) -> tuple[list[PreferencePair], list[DataError]]:
    """(pairs, skipped) from a `.jsonl` file."""
    path = Path(path)

    def pair(path: Path, line: int, record: dict[str, Any]) -> PreferencePair:
        return PreferencePair(**_required_strings(path, line, record, PREFERENCE_FIELDS))

    return _collect(path, _jsonl_records(path), pair, skip_bad_rows)


def load_preferences(path: str | Path, *, skip_bad_rows: bool = False) -> list[PreferencePair]:
    """Preference pairs from a `.jsonl` file."""
    return read_preferences(path, skip_bad_rows=skip_bad_rows)[0]


R = TypeVar("R")


def _collect(
    path: Path,
    records: Iterator[tuple[int, Record]],
    build: Callable[[Path, int, dict[str, Any]], R],
    skip_bad_rows: bool,
) -> tuple[list[R], list[DataError]]:
    rows: list[R] = []
    skipped: list[DataError] = []
    for line, record in records:
        try:
            if isinstance(record, DataError):
                raise record
            rows.append(build(path, line, record))
        except DataError as exc:
            if not skip_bad_rows:
                raise
            skipped.append(exc)
    if not rows:
        raise DataError(path, None, f"no rows ({len(skipped)} bad rows skipped)" if skipped else "no rows")
    return rows, skipped


def _jsonl_records(path: Path) -> Iterator[tuple[int, Record]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, DataError(path, number, f"not UTF-8 ({exc.reason})")
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, DataError(path, number, f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            if not isinstance(record, dict):
                yield number, DataError(path, number, f"expected a JSON object, got {type(record).__name__}")
                continue
            yield number, record


def _csv_records(path: Path) -> Iterator[tuple[int, Record]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                return
            missing = [name for name in ("instruction", "response") if name not in header]
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
                    problem = f"{len(fields)} fields, more than the header's {len(header)}"
                    yield start, DataError(path, start, problem)
                    continue
                yield start, dict(zip(header, fields, strict=False))
        except csv.Error as exc:
            raise DataError(path, reader.line_num, f"invalid CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise DataError(path, reader.line_num + 1, f"not UTF-8 ({exc.reason})") from None


def _optional_string(path: Path, line: int, record: dict[str, Any], name: str) -> str:
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(path, line, f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def _instruction_row(path: Path, line: int, record: dict[str, Any]) -> InstructionRow:
    values = _required_strings(path, line, record, ("instruction", "response"))
    context = _optional_string(path, line, record, "context")
    category = _optional_string(path, line, record, "category").strip() or DEFAULT_CATEGORY
    if category not in CATEGORIES:
        raise DataError(path, line, f"unknown category {category!r} (expected one of {sorted(CATEGORIES)})")
    expected = record.get("expected")
    if expected is not None and not isinstance(expected, dict):
        raise DataError(path, line, f"field 'expected' must be an object, got {type(expected).__name__}")
    group = _optional_string(path, line, record, "group")
    return InstructionRow(context=context, category=category, group=group, expected=expected, **values)


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
    """(train, held_out): whole groups (rows with the same `key`) held out, chosen by seed.

    Groups are ranked by a hash of the seed and their key and held out in that order until at
    least `round(len(rows) * held_out_fraction)` rows are; so the split depends only on the seed
    and the rows (not on Python's hash seed), adding rows rarely moves existing ones, and no
    group (or repeated prompt) is on both sides. Both parts keep the input order.
    """
    if not 0.0 <= held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    count = round(len(rows) * held_out_fraction)
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(row.key, []).append(index)
    held: set[int] = set()
    for key in sorted(groups, key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).digest()):
        if len(held) >= count:
            break
        held.update(groups[key])
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
