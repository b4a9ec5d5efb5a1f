"""TextStream: incremental detokenisation with SmolLM2's tokenizer, and stop strings held back."""

from __future__ import annotations

import random
from typing import Any

import pytest

from service.engines.local.text import TextStream


def feed(stream: TextStream, ids: list[int]) -> list[str]:
    """The deltas for ``ids`` one token at a time (flush not included)."""
    deltas = []
    for token in ids:
        deltas.append(stream.add(token))
        if stream.stopped:
            break
    return deltas


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! The answer is 42.",
        "Crème brûlée, naïve façade, Ærøskøbing",
        "Emoji 😀🎉 and flags 🇫🇷 in a row 👩‍💻",
        "日本語のテキストと中文文本",
        "  leading spaces,\ttabs\nand new lines  ",
    ],
)
def test_deltas_rebuild_the_decoded_text_without_broken_characters(tokenizer: Any, text: str) -> None:
    ids = encode(tokenizer, text)
    stream = TextStream(tokenizer)
    deltas = feed(stream, ids) + [stream.flush()]
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == text
    assert not any("\ufffd" in d for d in deltas)


def test_random_ids_and_special_tokens_rebuild_the_decoded_text(tokenizer: Any) -> None:
    """Random ids hold stray UTF-8 bytes and special tokens; nothing may be lost or doubled."""
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(len(tokenizer)) for _ in range(40)] + [tokenizer.eos_token_id, 10813, 242]
        stream = TextStream(tokenizer)
        deltas = feed(stream, ids) + [stream.flush()]
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)


def test_incomplete_character_is_held_until_its_last_byte(tokenizer: Any) -> None:
    ids = encode(tokenizer, "ok 😀")
    assert len(ids) == 3  # "ok", then the emoji's bytes over two tokens
    assert feed(TextStream(tokenizer), ids) == ["ok", "", " 😀"]


def test_stop_string_spanning_tokens_is_cut_and_never_sent(tokenizer: Any) -> None:
    text = "The answer is 42. END OF ANSWER and then more words"
    assert len(encode(tokenizer, "END OF ANSWER")) > 1
    stream = TextStream(tokenizer, stop=["END OF ANSWER"])
    deltas = feed(stream, encode(tokenizer, text))
    assert stream.stopped
    assert "".join(deltas) == stream.text == "The answer is 42. "
    assert not any("END" in d for d in deltas)
    assert stream.flush() == ""


def test_stop_string_inside_a_token_cuts_mid_token(tokenizer: Any) -> None:
    stream = TextStream(tokenizer, stop=["swer"])
    deltas = feed(stream, encode(tokenizer, "The answer is here"))
    assert stream.stopped and "".join(deltas) == "The an"


def test_partial_stop_prefix_is_held_then_flushed(tokenizer: Any) -> None:
    stream = TextStream(tokenizer, stop=["ENDING"])
    deltas = feed(stream, encode(tokenizer, "We reached the END"))
    assert "".join(deltas) == "We reached the "
    assert not stream.stopped
    assert stream.flush() == "END"


def test_partial_stop_prefix_is_released_when_the_text_moves_on(tokenizer: Any) -> None:
    stream = TextStream(tokenizer, stop=["ENDING"])
    deltas = feed(stream, encode(tokenizer, "the END is near"))
    assert "".join(deltas) == "the END is near"
    assert stream.flush() == ""


def test_earliest_of_several_stop_strings_wins(tokenizer: Any) -> None:
    stream = TextStream(tokenizer, stop=["world", "lo w", "", "never"])
    deltas = feed(stream, encode(tokenizer, "say Hello world now"))
    assert stream.stopped and "".join(deltas) == "say Hel"


@pytest.mark.parametrize(
    ("min_tokens", "expected"), [(0, "one"), (2, "one"), (3, "one. two"), (5, "one. two. three")]
)
def test_stop_strings_wait_for_min_tokens(tokenizer: Any, min_tokens: int, expected: str) -> None:
    """As in vLLM: a stop string ending before min_tokens is kept; the first one after ends the text."""
    ids = tokenizer.encode("one. two. three. four", add_special_tokens=False)  # one . two . three . four
    stream = TextStream(tokenizer, stop=["."])
    out = ""
    for generated, token in enumerate(ids, start=1):
        out += stream.add(token, check_stops=generated >= min_tokens)
        if stream.stopped:
            break
    assert stream.stopped and out == expected
