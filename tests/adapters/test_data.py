"""The data loader: happy paths, malformed rows with file and line, splits, chat messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.data import (
    DEFAULT_CATEGORY,
    DataError,
    InstructionRow,
    PreferencePair,
    load_instructions,
    load_preferences,
    read_instructions,
    read_requests,
    split,
    to_messages,
)

GOOD = {"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "open_qa"}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_jsonl_rows_load_in_order_with_optional_context(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "rows.jsonl",
        [
            json.dumps(GOOD),
            "",
            json.dumps({"instruction": "Sum up.", "response": "Short.", "category": "summarization"}),
            json.dumps({**GOOD, "context": "A text.", "category": "closed_qa", "extra": 1}),
        ],
    )
    rows = load_instructions(path)
    assert rows == [
        InstructionRow("Name a colour.", "", "Blue.", "open_qa"),
        InstructionRow("Sum up.", "", "Short.", "summarization"),
        InstructionRow("Name a colour.", "A text.", "Blue.", "closed_qa"),
    ]


def test_csv_rows_load_with_quoted_multiline_fields(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(
        'instruction,context,response,category\n"Say hi","","Hi, there.",open_qa\n'
        '"Summarize","line one\nline two","Two lines.",summarization\n',
        encoding="utf-8",
    )
    assert load_instructions(path) == [
        InstructionRow("Say hi", "", "Hi, there.", "open_qa"),
        InstructionRow("Summarize", "line one\nline two", "Two lines.", "summarization"),
    ]


def test_preferences_load(tmp_path: Path) -> None:
    pair = {"prompt": "Q?", "chosen": "A: yes", "rejected": "yes"}
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(pair), json.dumps(pair)])
    assert load_preferences(path) == [PreferencePair("Q?", "A: yes", "yes")] * 2


def _jsonl(record: object) -> str:
    return json.dumps(record)


MALFORMED_JSONL = [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (_jsonl({k: v for k, v in GOOD.items() if k != "response"}), "missing field 'response'"),
    (_jsonl({**GOOD, "instruction": "   "}), "field 'instruction' is empty"),
    (_jsonl({**GOOD, "response": 3}), "field 'response' must be a string, got int"),
    (_jsonl({**GOOD, "context": ["x"]}), "field 'context' must be a string, got list"),
    (_jsonl({**GOOD, "category": "poetry"}), "unknown category 'poetry'"),
]


@pytest.mark.parametrize(("bad", "problem"), MALFORMED_JSONL)
def test_malformed_jsonl_row_names_file_and_line(tmp_path: Path, bad: str, problem: str) -> None:
    path = write_lines(
        tmp_path / "dept.jsonl", [json.dumps(GOOD), "", json.dumps(GOOD), bad, json.dumps(GOOD)]
    )
    with pytest.raises(DataError) as caught:
        load_instructions(path)
    assert caught.value.line == 4
    assert str(caught.value).startswith(f"{path}:4: ")
    assert problem in str(caught.value)


CSV_HEADER = "instruction,context,response,category"
MALFORMED_CSV = [
    ('"Q","","",open_qa', 3, "field 'response' is empty"),
    ('"Q","","A",opinion', 3, "unknown category 'opinion'"),
    ('"Q","","A",open_qa,surplus', 3, "more than the header's 4"),
    ('"","","A",open_qa', 3, "field 'instruction' is empty"),
    # The row before spans lines 3-4, so the bad row is on line 5 of the file.
    ('"Q","a\nb","A",open_qa\n"Q","","A",nonsense', 5, "unknown category 'nonsense'"),
    ('"Q","a\nb",""', 3, "field 'response' is empty"),
]


@pytest.mark.parametrize(("bad", "line", "problem"), MALFORMED_CSV)
def test_malformed_csv_row_names_file_and_line(tmp_path: Path, bad: str, line: int, problem: str) -> None:
    path = write_lines(tmp_path / "dept.csv", [CSV_HEADER, '"Q","","A",open_qa', bad])
    with pytest.raises(DataError) as caught:
        load_instructions(path)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert problem in str(caught.value)


def test_csv_without_required_column_fails_on_header(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "dept.csv", ["instruction,context,answer,category", "Q,,A,open_qa"])
    with pytest.raises(DataError, match=r"dept\.csv:1: CSV header lacks column\(s\) response"):
        load_instructions(path)


def test_category_is_optional_and_defaults(tmp_path: Path) -> None:
    csv_path = write_lines(tmp_path / "rows.csv", ["instruction,response", "Say hi,Hi.", '"Sum up","Short."'])
    assert [row.category for row in load_instructions(csv_path)] == [DEFAULT_CATEGORY] * 2
    jsonl = write_lines(
        tmp_path / "rows.jsonl",
        [json.dumps({"instruction": "Q", "response": "A"}), json.dumps({**GOOD, "category": ""})],
    )
    assert [row.category for row in load_instructions(jsonl)] == [DEFAULT_CATEGORY] * 2


def test_skip_bad_rows_keeps_the_good_ones_and_returns_the_bad_with_their_lines(tmp_path: Path) -> None:
    lines = [json.dumps(GOOD), "{oops", json.dumps({**GOOD, "response": ""}), json.dumps(GOOD), "[1]"]
    path = write_lines(tmp_path / "dept.jsonl", lines)
    with pytest.raises(DataError, match=r"dept\.jsonl:2: invalid JSON"):
        load_instructions(path)
    rows, skipped = read_instructions(path, skip_bad_rows=True)
    assert len(rows) == 2 and load_instructions(path, skip_bad_rows=True) == rows
    assert [(e.line, e.problem.split(":")[0]) for e in skipped] == [
        (2, "invalid JSON"),
        (3, "field 'response' is empty"),
        (5, "expected a JSON object, got list"),
    ]
    csv_path = write_lines(
        tmp_path / "dept.csv", [CSV_HEADER, '"Q","","A",open_qa', '"Q","","A",x,y,z', '"Q","",""']
    )
    rows, skipped = read_instructions(csv_path, skip_bad_rows=True)
    assert len(rows) == 1 and [e.line for e in skipped] == [3, 4]
    only_bad = write_lines(tmp_path / "bad.jsonl", ["{", "[]"])
    with pytest.raises(DataError, match=r"no rows \(2 bad rows skipped\)"):
        read_instructions(only_bad, skip_bad_rows=True)


def test_group_and_expected_are_read_and_written_back(tmp_path: Path) -> None:
    record = {**GOOD, "group": "vpn/1", "expected": {"category": "vpn", "priority": "low"}}
    path = write_lines(tmp_path / "rows.jsonl", [json.dumps(record)])
    [row] = load_instructions(path)
    assert row.group == "vpn/1" and row.expected == {"category": "vpn", "priority": "low"}
    assert row.to_json() == record
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps({**GOOD, "expected": ["vpn"]})])
    with pytest.raises(DataError, match="field 'expected' must be an object, got list"):
        load_instructions(bad)


def test_requests_need_no_response(tmp_path: Path) -> None:
    lines = [
        json.dumps({"instruction": "Fix my VPN", "expected": {"category": "vpn-connection"}}),
        json.dumps({"instruction": "Review", "context": "Clause.", "response": "R", "category": "closed_qa"}),
    ]
    rows, skipped = read_requests(write_lines(tmp_path / "req.jsonl", lines))
    assert skipped == [] and [(r.instruction, r.response) for r in rows] == [
        ("Fix my VPN", ""),
        ("Review", "R"),
    ]
    assert rows[0].expected == {"category": "vpn-connection"}


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"prompt": "Q", "chosen": "A"}, "missing field 'rejected'"),
        ({"prompt": "Q", "chosen": "", "rejected": "B"}, "field 'chosen' is empty"),
        ({"prompt": 1, "chosen": "A", "rejected": "B"}, "field 'prompt' must be a string"),
    ],
)
def test_malformed_preference_names_file_and_line(tmp_path: Path, record: dict, problem: str) -> None:
    good = {"prompt": "Q", "chosen": "A", "rejected": "B"}
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(good), json.dumps(record)])
    with pytest.raises(DataError, match=rf"pairs\.jsonl:2: {problem}"):
        load_preferences(path)


def test_empty_file_and_unknown_suffix_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no rows"):
        load_instructions(write_lines(tmp_path / "empty.jsonl", []))
    with pytest.raises(DataError, match="unknown file type '.txt'"):
        load_instructions(write_lines(tmp_path / "rows.txt", [json.dumps(GOOD)]))


def _rows(count: int) -> list[InstructionRow]:
    return [InstructionRow(f"Question {i}?", "", f"Answer {i}.", "open_qa") for i in range(count)]


def test_split_is_deterministic_disjoint_and_sized() -> None:
    rows = _rows(200)
    train, held_out = split(rows, 0.15, seed=1)
    assert len(held_out) == 30 and len(train) == 170
    assert {r.instruction for r in train}.isdisjoint(r.instruction for r in held_out)
    assert sorted(train + held_out, key=rows.index) == rows
    assert split(rows, 0.15, seed=1) == (train, held_out)
    assert split(rows, 0.15, seed=2)[1] != held_out
    assert train == [row for row in rows if row in train]  # input order kept


def test_split_hardly_moves_rows_when_rows_are_added() -> None:
    rows = _rows(200)
    _, held_small = split(rows, 0.15, seed=3)
    _, held_big = split([*rows, *_rows(220)[200:]], 0.15, seed=3)
    assert len(set(held_small) - set(held_big)) <= 3


def test_split_keeps_groups_whole() -> None:
    rows = [InstructionRow(f"Q{i}", "", f"A{i}", "open_qa", group=f"g{i % 10}") for i in range(100)]
    for seed in range(5):
        train, held_out = split(rows, 0.15, seed)
        assert {r.group for r in train}.isdisjoint(r.group for r in held_out)
        assert len(held_out) == 20  # whole groups of 10 until at least 15 rows
    # repeated prompts without a group also stay on one side
    repeated = _rows(50) + _rows(50)
    train, held_out = split(repeated, 0.2, seed=1)
    assert {r.instruction for r in train}.isdisjoint(r.instruction for r in held_out)


def test_split_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match="held_out_fraction"):
        split(_rows(3), 1.0, seed=0)


def test_to_messages_puts_context_in_the_user_turn() -> None:
    plain = InstructionRow("Name a colour.", "", "Blue.", "open_qa")
    assert to_messages(plain) == [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
    with_context = InstructionRow("Summarize.", "Some text.", "Short.", "summarization")
    assert to_messages(with_context)[0] == {"role": "user", "content": "Summarize.\n\nContext:\nSome text."}
