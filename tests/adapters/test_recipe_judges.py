"""Recipes and overrides, ROUGE-L and win rates, the judges."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.data import check_ticket
from adapters.judges import FormatFirst, LlmJudge, RuleJudge, Verdict, format_check, make_judge
from adapters.metrics import lcs_length, rouge_l, win_rate
from adapters.modeling import load_causal_lm, load_tokenizer
from adapters.recipe import RecipeError, apply_overrides, field_help, load_recipe
from adapters.reward import run_reward
from adapters.rlaif import judge_samples
from adapters.splits import instruction_splits

from .conftest import HELPDESK, ROOT, tiny_recipe

TICKET = "TICKET: vpn\nPRIORITY: low\nSTEPS:\n1. Restart the VPN client.\nESCALATE: no"


def test_demo_recipes_load_and_overrides_apply() -> None:
    for path in sorted(p for p in (ROOT / "adapters" / "recipes").glob("*.yaml") if p.stem != "TEMPLATE"):
        if path.stem == "TEMPLATE":  # the blank recipe of adapters/README.md, for a new department
            continue
        recipe = load_recipe(path)
        assert recipe.department == path.stem == recipe.publish.name
        assert recipe.data.train.is_file() and recipe.data.format_check == path.stem
    recipe = load_recipe(HELPDESK, ["sft.epochs=3", "lora.target_modules=[q_proj, v_proj]", "eval.limit="])
    assert recipe.sft.epochs == 3 and recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.eval.limit is None
    assert recipe.run_dir("sft") == Path("runs/it-helpdesk/sft")


def test_overrides_and_recipes_that_cannot_be_used(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="not of the form key=value"):
        apply_overrides({}, ["sft.epochs"])
    with pytest.raises(RecipeError, match="'sft' is not a section"):
        apply_overrides({"sft": 1}, ["sft.epochs=2"])
    with pytest.raises(RecipeError, match="rlaif.method: Input should be 'dpo', 'kto' or 'orpo'"):
        load_recipe(HELPDESK, ["rlaif.method=ppo"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("department: x\n")
    with pytest.raises(RecipeError, match="data: Field required"):
        load_recipe(bad)


def test_a_csv_without_held_out_file_is_split_by_seed(tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    lines = ["instruction,context,response,category"]
    lines += [f"Question {i}?,,Answer {i}.,open_qa" for i in range(20)]
    rows.write_text("\n".join(lines) + "\n")
    recipe = load_recipe(HELPDESK, [f"data.train={rows}", "data.held_out=", "data.held_out_fraction=0.25"])
    train, held_out = instruction_splits(recipe)
    assert (len(train), len(held_out)) == (15, 5)
    assert instruction_splits(recipe) == (train, held_out)  # deterministic
    other_seed = recipe.model_copy(update={"seed": 7})
    assert instruction_splits(other_seed)[1] != held_out


def test_a_recipe_can_define_its_format_as_a_regex() -> None:
    recipe = load_recipe(HELPDESK, [r"data.format_regex='ANSWER: \w+'"])  # quoted: values are YAML
    check = format_check(recipe)
    assert check is not None and check("ANSWER: yes\n") and not check("ANSWER: yes, and more")
    assert RuleJudge(check).compare(["q"], ["ANSWER: ok"], ["ok"])[0].preference == 1.0


def test_every_field_has_help() -> None:
    lines = field_help()
    assert any(line.startswith("sft.learning_rate (") for line in lines)
    assert all(line.split(": ", 1)[1] for line in lines)


def test_rouge_l_is_the_lcs_f1() -> None:
    assert lcs_length("a b c d".split(), "a c d e".split()) == 3
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("", "anything") == 0.0
    # LCS "the cat" (2): precision 2/3, recall 2/4 -> F1 4/7
    assert rouge_l("The cat ran", "the black cat sat") == pytest.approx(
        2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4)
    )


def test_win_rate_counts_ties_half() -> None:
    assert win_rate([1.0, 0.0, 0.5, 1.0]) == {"win_rate": 0.625, "wins": 2, "ties": 1, "losses": 1, "n": 4}


def test_rule_judge_prefers_the_formatted_answer_and_ties_otherwise() -> None:
    verdicts = RuleJudge(check_ticket).compare(
        ["q"] * 3, [TICKET, "prose", TICKET], ["prose", TICKET, TICKET]
    )
    assert [v.preference for v in verdicts] == [1.0, 0.0, 0.5]


class PrefersB:
    """A model judge that always likes the second answer a little better."""

    name = "reward"

    def compare(self, prompts: list[str], a: list[str], b: list[str]) -> list[Verdict]:
        return [Verdict(0.0, {"score_a": 1.0, "score_b": 1.2}) for _ in prompts]


def test_format_first_overrules_the_model_judge_only_where_the_format_differs() -> None:
    judge = FormatFirst(PrefersB(), check_ticket)
    assert judge.name == "reward+format"
    verdicts = judge.compare(["q"] * 3, [TICKET, "prose", TICKET], ["prose", TICKET, TICKET])
    assert [v.preference for v in verdicts] == [1.0, 0.0, 0.0]  # format, format, then the model
    assert verdicts[0].detail == {"score_a": 1.0, "score_b": 1.2, "format_a": 1.0, "format_b": 0.0}


def test_the_recipe_judge_is_format_first_unless_switched_off(tiny_model_dir: Path, chain_dir: Path) -> None:
    recipe = tiny_recipe(tiny_model_dir, chain_dir)
    run_reward(recipe)
    tokenizer = load_tokenizer(recipe.base_model)
    assert make_judge(recipe, tokenizer).name == "reward+format"
    assert make_judge(recipe, tokenizer, kind="reward").name == "reward"
    plain = tiny_recipe(tiny_model_dir, chain_dir, "judge.format_first=false")
    assert make_judge(plain, tokenizer).name == "reward"
    assert make_judge(tiny_recipe(tiny_model_dir, chain_dir, "judge.kind=rule"), tokenizer).name == "rule"


def test_rlaif_keeps_pairs_the_format_decided_whatever_their_score_margin(
    tiny_model_dir: Path, chain_dir: Path
) -> None:
    run_reward(tiny_recipe(tiny_model_dir, chain_dir))
    strict = tiny_recipe(tiny_model_dir, chain_dir, "rlaif.min_margin=100")
    records = judge_samples(strict, ["q1", "q2"], [TICKET, TICKET], ["prose", TICKET])
    assert [r["kept"] for r in records] == [True, False]  # the second: same format, tiny margin
    assert records[0]["judge"] == "reward+format" and records[0]["preference"] == 1.0


def test_llm_judge_is_symmetric_in_the_answers_order(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    judge = LlmJudge(load_causal_lm(tiny_model_dir, tokenizer), tokenizer, "Prefer tickets.")
    prompts, a, b = ["My VPN drops.", "Printer jam."], [TICKET, "no idea"], ["call someone", TICKET]
    forward = judge.compare(prompts, a, b)
    backward = judge.compare(prompts, b, a)
    for f, r in zip(forward, backward, strict=True):
        assert 0.0 <= f.detail["p_a"] <= 1.0
        assert f.detail["p_a"] == pytest.approx(1.0 - r.detail["p_a"], abs=1e-4)
