"""Hidden chain of thought: only the text after ``Answer:`` reaches the client."""

from __future__ import annotations

from itertools import combinations

import pytest

from service.reasoning import MARKER, HiddenReasoning

TEXT = "Paris is the seat of government.\nAnswer: Paris, of course."
ANSWER = "Paris, of course."


def run(pieces: list[str]) -> tuple[list[str], str]:
    hidden = HiddenReasoning()
    return [hidden.feed(piece) for piece in pieces], hidden.finish()


def test_the_class_and_module_marker_agree() -> None:
    assert HiddenReasoning.MARKER == MARKER == "Answer:"


@pytest.mark.parametrize("cut", range(len(TEXT) + 1))
def test_every_split_position(cut: int) -> None:
    sent, tail = run([TEXT[:cut], TEXT[cut:]])
    assert "".join(sent) + tail == ANSWER
    assert tail == ""
    marker_end = TEXT.index(MARKER) + len(MARKER)
    if cut < marker_end:
        assert sent[0] == ""  # nothing is sent before the whole marker has been seen


def test_every_pair_of_split_positions() -> None:
    for first, second in combinations(range(len(TEXT) + 1), 2):
        sent, tail = run([TEXT[:first], TEXT[first:second], TEXT[second:]])
        assert "".join(sent) + tail == ANSWER, (first, second)


def test_one_character_at_a_time() -> None:
    sent, tail = run(list(TEXT))
    start = TEXT.index(MARKER) + len(MARKER) + 1  # after the marker and its space
    assert sent[:start] == [""] * start
    assert sent[start:] == list(ANSWER)
    assert tail == ""


def test_whitespace_after_the_marker_is_dropped_across_deltas() -> None:
    sent, tail = run(["Think. Answer:", " ", "\n", "  ", "Paris", " rocks \n"])
    assert sent == ["", "", "", "", "Paris", " rocks \n"]
    assert tail == ""


def test_a_second_marker_belongs_to_the_answer() -> None:
    sent, _ = run(["x Answer: a ", "Answer: b"])
    assert "".join(sent) == "a Answer: b"


def test_without_the_marker_finish_returns_everything() -> None:
    text = "I think it is Paris, but I did not say Answ"
    sent, tail = run([text[:10], text[10:30], text[30:]])
    assert sent == ["", "", ""]
    assert tail == text


def test_the_marker_is_case_sensitive() -> None:
    sent, tail = run(["answer: Paris"])
    assert sent == [""] and tail == "answer: Paris"


def test_non_streaming_use() -> None:
    hidden = HiddenReasoning()
    assert not hidden.answered
    assert hidden.feed(TEXT) + hidden.finish() == ANSWER
    assert hidden.answered


def test_a_marker_with_nothing_after_it_gives_an_empty_answer() -> None:
    sent, tail = run(["Reasoning only. ", "Answer:", "  "])
    assert sent == ["", "", ""] and tail == ""
