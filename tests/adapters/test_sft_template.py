"""SFT behind the L1 template (`sft.template_share`): which rows, what TRL is given, the run key; and
the evaluation leaves out L3 runs trained from another L2 adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from adapters.data import prompt_text
from adapters.evaluate import trained_adapters
from adapters.modeling import load_tokenizer
from adapters.recipe import load_recipe
from adapters.runs import StepError
from adapters.served import ServedPrompts, default_template, recipe_template
from adapters.sft import prompt_completion, template_inputs, templated_rows
from adapters.splits import instruction_splits, sft_rows
from service.registry import WEIGHTS, sha256_of

from .conftest import HELPDESK


def test_a_share_of_the_department_rows_trains_behind_the_template_as_served(tiny_model_dir: Path) -> None:
    recipe = load_recipe(HELPDESK, ["sft.template_share=0.25"])
    train, _ = instruction_splits(recipe)
    chosen = templated_rows(recipe)
    assert len(chosen) == round(len(train) * 0.25) and chosen <= set(train)
    assert templated_rows(recipe) == chosen  # drawn by seed
    assert templated_rows(load_recipe(HELPDESK, ["sft.template_share=0"])) == set()

    tokenizer = load_tokenizer(tiny_model_dir)
    served = ServedPrompts(tokenizer, recipe_template(recipe), recipe.department)
    rows = sft_rows(recipe)  # the department's rows and the replay rows
    examples = prompt_completion(rows, served, chosen)
    behind = {row for row, example in zip(rows, examples, strict=True) if len(example["prompt"]) > 1}
    assert behind == chosen  # never a replay row
    for row, example in zip(rows, examples, strict=True):
        user = {"role": "user", "content": prompt_text(row)}
        assert example["completion"] == [{"role": "assistant", "content": row.response}]
        if row not in chosen:
            assert example["prompt"] == [user]
            continue
        prompt = example["prompt"]
        assert prompt[0]["role"] == "system" and prompt[-1] == user and len(prompt) == 6  # 2 few-shot pairs
        # the text the model trains on is the text the gateway sends
        trained = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        assert trained == served.text(prompt_text(row), l1=True)


def test_the_template_file_is_part_of_the_sft_run_key(tmp_path: Path) -> None:
    shipped = default_template("it-helpdesk")
    assert shipped is not None
    template = tmp_path / "helpdesk.yaml"
    shutil.copy(shipped, template)
    recipe = load_recipe(HELPDESK, [f"data.template={template}", "sft.template_share=0.25"])
    assert recipe_template(recipe) == template
    first = template_inputs(recipe)
    assert first == {"l1_template": sha256_of(template)}
    template.write_text(template.read_text() + "\n# edited\n")
    assert template_inputs(recipe) != first
    assert template_inputs(load_recipe(HELPDESK, ["sft.template_share=0"])) == {}
    with pytest.raises(StepError, match="finance has no L1 template"):
        template_inputs(load_recipe(HELPDESK, ["department=finance", "sft.template_share=0.5"]))
    with pytest.raises(ValueError, match="template_share"):
        load_recipe(HELPDESK, ["sft.template_share=1.5"])


def _finished(folder: Path, options: dict[str, str]) -> None:
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / WEIGHTS).write_bytes(folder.name.encode())
    (folder / "metrics.json").write_text(json.dumps({}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"options": options}))


def test_the_evaluation_leaves_out_l3_runs_of_another_l2_adapter(tmp_path: Path) -> None:
    recipe = load_recipe(HELPDESK, [f"runs_dir={tmp_path}", "publish.l3=dpo"])
    _finished(recipe.run_dir("sft"), {})
    sft = sha256_of(recipe.run_dir("sft") / "adapter" / WEIGHTS)
    _finished(recipe.run_dir("dpo"), {"sft": sft})
    _finished(recipe.run_dir("rlaif"), {"sft": "an older adapter"})
    _finished(recipe.run_dir("rl"), {"sft": sft})
    assert set(trained_adapters(recipe)) == {"sft", "dpo"}  # rl: only when it is the published L3
    assert set(trained_adapters(recipe.model_copy(update={"publish": recipe.publish.model_copy(
        update={"l3": "rl"})}))) == {"sft", "dpo", "rl"}  # fmt: skip
