"""The recipe's data options: format check names, replay, the reward model's pairs, data hashes in
the run cache, `--skip-bad-rows`, and the guide's one command (CSV to a published L2 adapter)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from adapters.cli import check_data, run_chain
from adapters.recipe import RecipeError, field_help, load_recipe
from adapters.runs import Run, data_digests
from adapters.splits import instruction_splits, replay_count, reward_splits, sft_rows
from service import cli as service_cli

from .conftest import HELPDESK, ROOT

DATA = ROOT / "adapters" / "datasets"
TEMPLATE = ROOT / "adapters" / "recipes" / "TEMPLATE.yaml"


def test_format_check_names_are_checked_against_the_registry() -> None:
    assert load_recipe(HELPDESK, ["data.format_check=legal"]).data.format_check == "legal"
    with pytest.raises(RecipeError, match=r"unknown format check 'tickets' \(known: it-helpdesk, legal\)"):
        load_recipe(HELPDESK, ["data.format_check=tickets"])
    assert any(line.startswith("data.format_check (None)") and "it-helpdesk" in line for line in field_help())


def test_the_template_loads_and_names_no_department_data() -> None:
    recipe = load_recipe(TEMPLATE)
    assert recipe.data.held_out is None and recipe.data.preferences is None and recipe.replay is None
    assert recipe.judge.kind == "llm"


def test_replay_rows_are_mixed_in_at_the_recipe_fraction() -> None:
    plain = load_recipe(HELPDESK, ["replay="])  # the demo recipes mix replay in; without it:
    train, _ = instruction_splits(plain)
    assert plain.replay is None and sft_rows(plain) == train
    mixed = load_recipe(HELPDESK, [f"replay.file={DATA / 'general' / 'replay.jsonl'}", "replay.fraction=0.2"])
    rows = sft_rows(mixed)
    replay = [row for row in rows if row not in train]
    assert len(replay) == replay_count(len(train), 0.2) in (60, 61)
    assert len(replay) / len(rows) == pytest.approx(0.2, abs=0.01)
    assert sorted(map(str, rows)) == sorted(map(str, train + replay)) and sft_rows(mixed) == rows  # seeded
    with pytest.raises(RecipeError, match="replay.fraction"):
        load_recipe(HELPDESK, ["replay.file=x.jsonl", "replay.fraction=1.0"])


def test_the_reward_model_reads_its_own_pairs() -> None:
    recipe = load_recipe(HELPDESK)
    reward, held_out = reward_splits(recipe)
    dpo, _ = reward_splits(load_recipe(HELPDESK, ["data.preferences_reward="]))
    assert {p.prompt for p in reward}.isdisjoint(p.prompt for p in dpo)
    assert {p.prompt for p in reward}.isdisjoint(p.prompt for p in held_out)


def _copy_data(tmp_path: Path) -> list[str]:
    folder = tmp_path / "data"
    shutil.copytree(DATA / "it-helpdesk", folder)
    names = ("train", "held_out", "held_out_independent", "preferences", "preferences_reward")
    return [f"data.{name}={folder / (name + '.jsonl')}" for name in names] + [
        f"data.preferences_held_out={folder / 'preferences_held_out.jsonl'}",
        f"data.off_domain={folder / 'off_domain.jsonl'}",
        f"runs_dir={tmp_path / 'runs'}",
    ]


def _finish(run: Run) -> None:
    run.start()
    run.finish({"done": True})


def test_editing_a_data_file_in_place_invalidates_the_runs_that_read_it(tmp_path: Path) -> None:
    recipe = load_recipe(HELPDESK, _copy_data(tmp_path))
    for step in ("sft", "dpo", "eval"):
        _finish(Run(recipe, step))
    assert all(Run(recipe, step).done() for step in ("sft", "dpo", "eval"))
    train = recipe.data.train
    train.write_text(train.read_text().replace("Restart", "Reboot", 1))  # same path, new content
    assert not Run(recipe, "sft").done() and not Run(recipe, "eval").done()
    assert Run(recipe, "dpo").done()  # DPO reads the preference pairs only
    _finish(Run(recipe, "sft"))
    _finish(Run(recipe, "eval"))
    held_out = recipe.data.held_out
    assert held_out is not None
    held_out.write_text(held_out.read_text() + "\n")
    assert Run(recipe, "sft").done() and not Run(recipe, "eval").done()
    # the replay file is part of SFT's key; its fraction too (the `replay` section)
    replay = tmp_path / "replay.jsonl"
    shutil.copy(DATA / "general" / "replay.jsonl", replay)
    with_replay = load_recipe(HELPDESK, [*_override_paths(recipe), f"replay.file={replay}"])
    _finish(Run(with_replay, "sft"))
    assert data_digests(with_replay, "sft").keys() == {"train", "replay"}
    replay.write_text(replay.read_text().replace("Compute", "Add", 1))
    assert not Run(with_replay, "sft").done()


def _override_paths(recipe) -> list[str]:  # type: ignore[no-untyped-def]
    files = [f"data.{name}={path}" for name, path in recipe.data.files().items()]
    return [*files, f"runs_dir={recipe.runs_dir}"]


def _bad_csv(tmp_path: Path) -> Path:
    lines = ["instruction,context,response"]
    lines += [f'"What is {i} + {i}?","","{i} + {i} = {2 * i}."' for i in range(40)]
    lines.insert(5, '"Broken row","",""')  # file line 6: empty response
    lines.insert(9, '"Another","","x",too,many')  # file line 10
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_skip_bad_rows_reports_the_count_and_without_it_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    rows = _bad_csv(tmp_path)
    args = ["train", "data", "--recipe", str(TEMPLATE), "--set", f"data.train={rows}"]
    assert service_cli.main(args) == 1
    assert f"{rows}:6: field 'response' is empty" in capsys.readouterr().err
    assert service_cli.main([*args, "--skip-bad-rows"]) == 0
    out = capsys.readouterr().out
    assert f"train: {rows}: 40 rows, 2 bad rows skipped" in out
    assert f"{rows}:10: 5 fields, more than the header's 3" in out
    recipe = load_recipe(TEMPLATE, [f"data.train={rows}", "data.skip_bad_rows=true"])
    with caplog.at_level(logging.WARNING, logger="adapters"):
        train, held_out = instruction_splits(recipe)
    assert len(train) + len(held_out) == 40
    assert "skipped 2 bad row(s)" in caplog.text
    assert check_data(recipe)[0] == f"train: {rows}: 40 rows, 2 bad rows skipped"


def test_the_guides_one_command_takes_a_csv_to_a_published_l2_adapter(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = _bad_csv(tmp_path)
    overrides = [
        "department=arithmetic",
        f"base_model={tiny_model_dir}",
        f"data.train={rows}",
        "data.skip_bad_rows=true",
        r"data.format_regex='\d+ \+ \d+ = \d+\.'",
        "judge.kind=rule",
        f"runs_dir={tmp_path / 'runs'}",
        f"publish.registry={tmp_path / 'registry'}",
        "publish.name=arithmetic",
        "publish.alias=arithmetic",
        "sft.max_steps=3",
        "sft.batch_size=4",
        "eval.max_new_tokens=8",
        "eval.limit=4",
        "gate_l2.min_loss_reduction=0",
    ]
    refs = run_chain(load_recipe(TEMPLATE, overrides), until="L2")
    assert list(refs) == ["L2"]
    manifests = list((tmp_path / "registry").rglob("*.json"))
    assert manifests and any("arithmetic" in json.dumps(json.loads(m.read_text())) for m in manifests)
    assert not (tmp_path / "runs" / "arithmetic" / "reward").exists()


def test_models_for_evaluation_and_sampling_go_to_the_gpu_when_there_is_one(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    import torch

    from adapters import modeling

    assert modeling.device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert modeling.device() == torch.device("cuda")
    moved: list[torch.device] = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, where: moved.append(where) or self)
    modeling.load_causal_lm(tiny_model_dir, modeling.load_tokenizer(tiny_model_dir))
    assert moved == [torch.device("cuda")]
