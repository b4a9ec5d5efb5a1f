"""Publishing: the gate, vLLM's checks, stale evaluations, idempotence; and the CLI's errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from adapters.dpo import run_dpo
from adapters.evaluate import run_eval
from adapters.publish import PublishRefused, publish, registry_for
from adapters.recipe import Recipe
from adapters.reward import run_reward
from adapters.rlaif import run_rlaif
from adapters.sft import run_sft
from service.cli import main
from service.registry import AdapterRejected

from .conftest import HELPDESK, tiny_recipe


@pytest.fixture(scope="module")
def evaluated(recipe: Recipe) -> Recipe:
    for step in (run_sft, run_reward, run_rlaif, run_eval):
        step(recipe)
    return recipe


def with_gate(recipe: Recipe, level: str, **gate: float) -> Recipe:
    name = "gate_l2" if level == "L2" else "gate_l3"
    return recipe.model_copy(update={name: getattr(recipe, name).model_copy(update=gate)})


def test_publish_places_a_manifest_with_the_evaluation(evaluated: Recipe) -> None:
    adapter = publish(evaluated, "L2")
    manifest = adapter.manifest
    assert manifest.level == "L2" and manifest.name == "it-helpdesk" and manifest.rank == 16
    report = json.loads((evaluated.run_dir("eval") / "report.json").read_text())
    assert manifest.evaluation["L2"]["response_loss"] == report["variants"]["sft"]["response_loss"]
    assert {p.name for p in adapter.path.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
    }
    # the gateway's registry loads it (base model, sha256 and servability checked again)
    assert registry_for(evaluated).load("it-helpdesk", manifest.version).manifest.sha256 == manifest.sha256
    assert publish(evaluated, "L2").ref == adapter.ref  # same weights: same version


def test_l3_publish_is_a_new_version(evaluated: Recipe) -> None:
    l2 = publish(evaluated, "L2")
    l3 = publish(evaluated, "L3")
    assert l3.manifest.level == "L3" and l3.manifest.version > l2.manifest.version
    assert "rlaif_vs_sft" in l3.manifest.evaluation["win_rates"]


def test_a_failed_gate_refuses(evaluated: Recipe) -> None:
    with pytest.raises(PublishRefused, match="loss reduction .* below the gate's 0.99"):
        publish(with_gate(evaluated, "L2", min_loss_reduction=0.99), "L2")
    with pytest.raises(PublishRefused, match="lower bound .* below the gate's 1.01|format compliance"):
        publish(with_gate(evaluated, "L3", min_format=1.0, min_win_rate=1.0), "L3")


def test_a_bad_adapter_is_refused(evaluated: Recipe, tmp_path: Path) -> None:
    """An L3 run whose adapter carries a saved module (what TRL adds for new tokens)."""
    broken = evaluated.model_copy(update={"runs_dir": tmp_path / "runs"})
    shutil.copytree(evaluated.runs_dir, broken.runs_dir)
    adapter = broken.run_dir("rlaif") / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(config | {"modules_to_save": ["lm_head"]}))
    weights = load_file(adapter / "adapter_model.safetensors")
    weights["base_model.model.lm_head.weight"] = weights[next(iter(weights))].clone()
    save_file(weights, adapter / "adapter_model.safetensors")
    with pytest.raises(AdapterRejected, match="modules_to_save"):
        publish(broken, "L3")


def test_an_evaluation_of_other_weights_is_refused(evaluated: Recipe, tmp_path: Path) -> None:
    stale = evaluated.model_copy(update={"runs_dir": tmp_path / "runs"})
    shutil.copytree(evaluated.runs_dir, stale.runs_dir)
    shutil.rmtree(stale.run_dir("dpo"), ignore_errors=True)
    run_dpo(stale)  # trained after the evaluation
    stale = stale.model_copy(update={"publish": stale.publish.model_copy(update={"l3": "dpo"})})
    with pytest.raises(PublishRefused, match="evaluation does not cover"):
        publish(stale, "L3")


def test_cli_names_file_and_line_of_a_malformed_row(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = tmp_path / "train.jsonl"
    good = {
        "instruction": "Reset my password.",
        "context": "",
        "response": "TICKET: x",
        "category": "open_qa",
    }
    train.write_text(json.dumps(good) + "\n" + json.dumps(good | {"category": "poetry"}) + "\n")
    recipe = tiny_recipe(tiny_model_dir, tmp_path)
    args = ["train", "sft", "--recipe", str(HELPDESK), "--set", f"data.train={train}"]
    args += ["--set", f"runs_dir={recipe.runs_dir}", "--set", f"base_model={tiny_model_dir}"]
    assert main(args) == 1
    assert f"{train}:2: unknown category 'poetry'" in capsys.readouterr().err


def test_cli_refuses_a_bad_override_and_an_unknown_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "sft", "--recipe", str(HELPDESK), "--set", "lora.r=12"]) == 1
    assert "not a rank vLLM serves" in capsys.readouterr().err
    assert main(["train", "sft", "--recipe", str(HELPDESK), "--set", "sft.epoch=1"]) == 1
    assert "sft.epoch: Extra inputs are not permitted" in capsys.readouterr().err


def test_cli_publish_without_evaluation_refuses(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "publish", "--level", "L2", "--recipe", str(HELPDESK), "--set", f"runs_dir={tmp_path}"]
    assert main(args) == 1
    assert "step 'sft' has not finished" in capsys.readouterr().err


def test_the_chain_keeps_l2_published_when_l3_is_refused(
    evaluated: Recipe, capsys: pytest.CaptureFixture[str]
) -> None:
    from adapters.cli import run_chain

    refused = with_gate(evaluated, "L3", min_win_rate=1.01)  # no lower bound reaches it
    with pytest.raises(PublishRefused, match="win rate"):
        run_chain(refused)
    out = capsys.readouterr().out
    l2 = publish(evaluated, "L2")
    assert out.strip() == f"it-helpdesk: published {l2.ref} (L2)"  # said before L3's gate refused
