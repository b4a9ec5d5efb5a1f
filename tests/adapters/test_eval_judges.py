"""Judges asked in both orders, a local causal-LM folder, an OpenAI-compatible endpoint, agreement."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from adapters.independent_judges import JudgeChoice, OpenAIJudge, agreement, build_judge
from adapters.judges import LlmJudge, Verdict, both_orders
from adapters.modeling import load_causal_lm, load_tokenizer
from adapters.recipe import load_recipe
from service.config import Settings
from tests.conftest import API_KEY, TINY_MODEL, LiveServer

from .conftest import HELPDESK, tiny_recipe

TICKET = "TICKET: vpn\nPRIORITY: low\nSTEPS:\n1. Restart the VPN client.\nESCALATE: no"


def test_a_win_needs_both_orders() -> None:
    verdicts = both_orders([0.9, 0.9, 0.2, 0.5], [0.8, 0.3, 0.1, 0.9])
    assert [v.preference for v in verdicts] == [1.0, 0.5, 0.0, 0.5]  # position bias -> a tie
    assert verdicts[1].detail == {"p_a": 0.6, "p_a_first": 0.9, "p_a_second": 0.3}


class FirstPosition(LlmJudge):
    """A judge that always prefers whatever it is shown first."""

    def __init__(self) -> None:
        self.name = "llm"

    def _p_first(self, prompts, a, b):  # type: ignore[no-untyped-def,override]
        return [0.9 for _ in prompts]


def test_a_position_biased_judge_declares_no_winner() -> None:
    verdicts = FirstPosition().compare(["q", "r"], [TICKET, "x"], ["x", TICKET])
    assert [v.preference for v in verdicts] == [0.5, 0.5]


def test_any_local_causal_lm_folder_can_judge(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(tiny_model_dir, tmp_path)
    tokenizer = load_tokenizer(tiny_model_dir)
    judge = build_judge(JudgeChoice(kind="llm", model=str(tiny_model_dir)), recipe, tokenizer)
    assert judge is not None and judge.name == f"llm:{tiny_model_dir.name}"
    verdicts = judge.compare(["My VPN drops."], [TICKET], ["call someone"])
    assert {"p_a_first", "p_a_second"} <= verdicts[0].detail.keys()  # both orders asked
    assert build_judge(JudgeChoice(kind="reward"), recipe, tokenizer) is None  # no reward model trained
    shared = build_judge(
        JudgeChoice(kind="llm", name="base"), recipe, tokenizer, load_causal_lm(tiny_model_dir, tokenizer)
    )
    assert shared is not None and shared.name == "base"
    rule = build_judge(JudgeChoice(kind="rule"), recipe, tokenizer)
    assert rule is not None and rule.compare(["q"], [TICKET], ["prose"])[0].preference == 1.0


def test_an_openai_compatible_endpoint_judges_in_both_orders(
    tiny_settings: Settings, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real gateway (tiny random model) behind the real openai client: two questions per pair."""
    with LiveServer(tiny_settings) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=60)
        judge = OpenAIJudge(client, TINY_MODEL, "Prefer tickets.")
        verdicts = judge.compare(["My VPN drops.", "Printer jam."], [TICKET, "no idea"], ["call IT", TICKET])
        assert judge.asked == 4 and len(verdicts) == 2
        assert all(v.preference in (0.0, 0.5, 1.0) and "p_a_second" in v.detail for v in verdicts)
        recipe = tiny_recipe(tiny_model_dir, tmp_path)
        choice = JudgeChoice(
            kind="openai", base_url=server.base_url, model=TINY_MODEL, api_key_env="JUDGE_KEY"
        )
        monkeypatch.setenv("JUDGE_KEY", API_KEY)
        built = build_judge(choice, recipe, None)
        assert built is not None and built.name == f"openai:{TINY_MODEL}"
        assert len(built.compare(["q"], ["a"], ["b"])) == 1


def test_agreement_between_judges() -> None:
    win, tie, loss = Verdict(1.0), Verdict(0.5), Verdict(0.0)
    result = agreement({"reward": [win, win, loss, tie], "llm": [win, loss, loss, tie], "rule": [tie] * 4})
    assert [r["judges"] for r in result] == [["reward", "llm"], ["reward", "rule"], ["llm", "rule"]]
    assert result[0]["agreement"] == 0.75 and 0 < result[0]["kappa"] < 1
    assert result[1]["agreement"] == 0.25


def test_the_fields_judge_prefers_the_answer_with_more_right_fields() -> None:
    recipe = load_recipe(HELPDESK)
    truth = {"category": "vpn", "priority": "high", "escalate": "no", "step_keywords": ["restart"]}
    judge = build_judge(JudgeChoice(kind="fields"), recipe, None, None, [truth, truth, truth, None])
    assert judge is not None and judge.name == "fields"
    wrong = TICKET.replace("TICKET: vpn", "TICKET: printer")
    right = TICKET.replace("PRIORITY: low", "PRIORITY: high")
    verdicts = judge.compare(["q"] * 4, [right, TICKET, TICKET, right], [TICKET, wrong, TICKET, "prose"])
    assert [v.preference for v in verdicts] == [1.0, 1.0, 0.5, 0.5]  # no true values: a tie
    assert verdicts[0].detail == {"score_a": 4.0, "score_b": 3.0}
    # nothing to grade against, or no field parser: the judge sits out
    assert build_judge(JudgeChoice(kind="fields"), recipe, None, None, [None, None]) is None
    no_parser = load_recipe(HELPDESK, ["data.format_check=", "data.format_regex=TICKET.*"])
    assert build_judge(JudgeChoice(kind="fields"), no_parser, None, None, [truth]) is None
