"""Every training step on the tiny model, in seconds: LoRA weights change, adapters are servable.

The steps share one run folder per module (each later step needs the L2 adapter); a step that
already ran with the same config returns its saved figures, which is also what rerunning
`make adapters` relies on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapters.dpo import run_dpo
from adapters.evaluate import run_eval
from adapters.recipe import Recipe
from adapters.reward import run_reward
from adapters.rl import DEFAULT_KL, kl_weight, run_rl
from adapters.rlaif import run_rlaif
from adapters.runs import Run, input_digests
from adapters.sft import run_sft, template_inputs, templated_rows
from adapters.splits import sft_rows
from service.registry import AdapterRejected, check_servable

from .conftest import tiny_recipe


def lora_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def assert_trained_from_zero(folder: Path) -> None:
    """PEFT starts every lora_B at zero: a trained adapter has moved them."""
    weights = lora_weights(folder)
    b = [w for k, w in weights.items() if "lora_B" in k]
    assert b and all(w.abs().sum() > 0 for w in b)


def assert_moved(before: Path, after: Path) -> None:
    old, new = lora_weights(before), lora_weights(after)
    assert old.keys() == new.keys()
    assert any(not torch.equal(old[k], new[k]) for k in old)


def test_sft_trains_a_servable_lora(recipe: Recipe) -> None:
    figures = run_sft(recipe)
    adapter = recipe.run_dir("sft") / "adapter"
    assert figures["global_step"] == 4 and figures["train_rows"] == len(sft_rows(recipe))
    assert figures["template_rows"] == len(templated_rows(recipe)) > 0  # a quarter of the non-replay rows
    assert_trained_from_zero(adapter)
    config = check_servable(adapter)
    assert config["r"] == 16 and not config.get("modules_to_save")
    assert sorted(config["target_modules"]) == sorted(recipe.lora.target_modules)
    run_dir = recipe.run_dir("sft")
    assert {"config.yaml", "train.log", "log.jsonl", "metrics.json"} <= {p.name for p in run_dir.iterdir()}
    assert len((run_dir / "log.jsonl").read_text().splitlines()) >= 4


def test_a_finished_step_is_not_trained_again(recipe: Recipe) -> None:
    weights = recipe.run_dir("sft") / "adapter" / "adapter_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    run_sft(recipe)
    assert weights.stat().st_mtime_ns == stamp


def test_sft_resumes_from_its_last_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(tiny_model_dir, tmp_path)
    run_sft(recipe)
    run_dir = recipe.run_dir("sft")
    # as if killed after step 2: the step-4 checkpoint, the adapter and metrics.json never got written
    for name in ("checkpoints/checkpoint-4", "adapter"):
        for path in sorted((run_dir / name).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (run_dir / name).rmdir()
    (run_dir / "metrics.json").unlink()
    figures = run_sft(recipe)
    assert figures["resumed_from"].endswith("checkpoint-2")
    assert figures["global_step"] == 4
    assert_trained_from_zero(run_dir / "adapter")


def test_reward_model_trains_and_reports_held_out_accuracy(recipe: Recipe) -> None:
    figures = run_reward(recipe)
    adapter = recipe.run_dir("reward") / "adapter"
    assert_trained_from_zero(adapter)
    assert 0.0 <= figures["held_out_accuracy"] <= 1.0
    assert any("score" in k for k in lora_weights(adapter))  # its head travels with it
    with pytest.raises(AdapterRejected, match="modules_to_save"):
        check_servable(adapter)  # a classifier, never served


@pytest.mark.parametrize("method", ["dpo", "kto", "orpo"])
def test_preference_methods_continue_the_l2_adapter(recipe: Recipe, method: str, tmp_path: Path) -> None:
    run_sft(recipe)
    variant = recipe.model_copy(update={"dpo": recipe.dpo.model_copy(update={"method": method})})
    if method != "dpo":  # a separate runs folder, the L2 adapter linked in
        variant = variant.model_copy(update={"runs_dir": tmp_path / "runs"})
        (tmp_path / "runs" / recipe.department).mkdir(parents=True)
        (tmp_path / "runs" / recipe.department / "sft").symlink_to(recipe.run_dir("sft"))
    figures = run_dpo(variant)
    assert figures["method"] == method and figures["global_step"] == 3
    assert_moved(recipe.run_dir("sft") / "adapter", variant.run_dir("dpo") / "adapter")
    check_servable(variant.run_dir("dpo") / "adapter")
    assert not (variant.run_dir("dpo") / "adapter" / "ref").exists()  # the frozen reference stays behind


def test_rlaif_keeps_the_judge_verdicts(recipe: Recipe) -> None:
    run_reward(recipe)
    figures = run_rlaif(recipe)
    verdicts = [json.loads(x) for x in (recipe.run_dir("rlaif") / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 8 == figures["sampled_prompts"]
    assert figures["judged_pairs"] == sum(v["kept"] for v in verdicts) > 0
    assert all({"answer_a", "answer_b", "preference", "detail"} <= v.keys() for v in verdicts)
    assert_moved(recipe.run_dir("sft") / "adapter", recipe.run_dir("rlaif") / "adapter")
    check_servable(recipe.run_dir("rlaif") / "adapter")


def test_a_step_reruns_only_when_what_it_reads_changed(recipe: Recipe) -> None:
    run_dpo(recipe)
    tuned = recipe.model_copy(update={"rlaif": recipe.rlaif.model_copy(update={"prompts": 5})})
    assert Run(tuned, "sft", template_inputs(tuned)).done()
    retrained = recipe.model_copy(update={"sft": recipe.sft.model_copy(update={"max_steps": 5})})
    assert not Run(retrained, "sft", template_inputs(retrained)).done()
    assert not Run(recipe, "sft", {"l1_template": "0" * 64}).done()  # an edited L1 template: train again
    assert Run(recipe, "dpo", input_digests(recipe, "sft")).done()
    assert not Run(recipe, "dpo", {"sft": "0" * 64}).done()  # another L2 adapter: train L3 again


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_rl_trains_against_the_reward_model(recipe: Recipe, algorithm: str) -> None:
    run_reward(recipe)
    variant = recipe.model_copy(update={"rl": recipe.rl.model_copy(update={"algorithm": algorithm})})
    figures = run_rl(variant, force=True)
    assert figures["algorithm"] == algorithm and figures["reward"] == "reward"
    assert figures["last_reward"] is not None
    assert figures["kl_weight"] == DEFAULT_KL > 0 and figures["last_kl"] is not None  # KL on by default
    assert (recipe.run_dir("rl") / "reward_kl.png").read_bytes().startswith(b"\x89PNG")
    assert_moved(recipe.run_dir("sft") / "adapter", recipe.run_dir("rl") / "adapter")
    check_servable(recipe.run_dir("rl") / "adapter")


def test_an_explicit_zero_kl_weight_is_kept(recipe: Recipe) -> None:
    assert kl_weight(recipe.rl) == DEFAULT_KL
    assert kl_weight(type(recipe.rl)(beta=0.0)) == 0.0 and kl_weight(type(recipe.rl)(beta=0.2)) == 0.2


def test_eval_reports_the_table_forgetting_and_judges(recipe: Recipe, tmp_path: Path) -> None:
    probes = [{"id": "sky", "instruction": "What colour is the sky?", "kind": "fact", "accept": ["blue"],
               "match": "contains"}, {"id": "nonsense", "instruction": "Who is the king of the Moon?",
               "kind": "refusal", "match": "refusal"}]  # fmt: skip
    (tmp_path / "forgetting.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes))
    (tmp_path / "off.jsonl").write_text(json.dumps({"instruction": "Write a haiku about spring."}) + "\n")
    files = {"off_domain": tmp_path / "off.jsonl", "forgetting": tmp_path / "forgetting.jsonl"}
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update=files)})
    for step in (run_sft, run_reward, run_dpo, run_rlaif):
        step(recipe)
    report = run_eval(recipe)
    assert list(report["variants"])[:4] == ["base", "l1", "sft", "l1+sft"]  # the table's order
    assert {"dpo", "rlaif"} <= report["variants"].keys() and report["template"].endswith("it-helpdesk.yaml")
    sft = report["variants"]["sft"]
    assert sft["response_loss"] > 0 and sft["perplexity"] > 1 and 0 <= sft["format_compliance"] <= 1
    held = sft["sets"]["held_out"]
    assert held["n"] == 6 and {"category", "priority", "escalate", "steps", "all"} <= held["fields"].keys()
    assert 0 <= held["format"]["low"] <= held["format"]["rate"] <= held["format"]["high"] <= 1
    assert "response_loss" not in report["variants"]["l1"]  # teacher-forced loss only as trained
    n = sum(report["sets"].values())
    assert report["win_rates"]["rlaif_vs_sft"]["reward"]["n"] == n
    assert report["win_rates"]["sft_vs_base"]["rule"]["n"] == n
    assert {"llm", "reward", "rule", "fields"} <= report["win_rates"]["dpo_vs_sft"].keys()
    constant = report["constant_answer"]["held_out"]  # the cheapest field baseline
    assert {"category", "priority", "escalate"} <= constant.keys() and constant["priority"]["n"] == 6
    assert report["judge_agreement"]["dpo_vs_sft"][0]["n"] == n
    forgetting = report["forgetting"]
    assert forgetting["base"]["overall"]["n"] == 2 and "gate" in forgetting["sft"]
    untemplated = {name for name, v in report["variants"].items() if not v["l1_template"]}
    assert set(forgetting) == untemplated >= {"base", "sft", "dpo", "rlaif"}  # no template on general prompts
    assert report["off_domain"]["sft"]["in_department_format"]["n"] == 1
    folder = recipe.run_dir("eval")
    names = {p.name for p in folder.iterdir()}
    assert {"report.json", "report.md", "report.png", "answers.jsonl", "verdicts.jsonl"} <= names
    text = (folder / "report.md").read_text()
    assert "| L1+L2 (served) |" in text and "## Forgetting" in text and "Cohen's kappa" in text
    assert "| constant answer | - |" in text
    llm = [json.loads(line) for line in (folder / "verdicts.jsonl").read_text().splitlines()]
    assert any("p_a_second" in v["detail"] for v in llm if v["judge"] == "llm")  # both orders asked
