"""Fixtures for the adapter factory: the demo recipe pointed at the tiny model, a few steps each."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[2]
HELPDESK = ROOT / "adapters" / "recipes" / "it-helpdesk.yaml"

# every step in seconds on the 2-layer model: a few optimizer steps, few prompts, short answers
TINY_OVERRIDES = [
    "sft.max_steps=4",
    "sft.batch_size=4",
    "sft.save_steps=2",
    "sft.logging_steps=1",
    "sft.learning_rate=0.01",
    "reward.max_steps=3",
    "reward.batch_size=4",
    "dpo.max_steps=3",
    "dpo.batch_size=4",
    "dpo.learning_rate=0.01",
    "rlaif.prompts=8",
    "rlaif.max_new_tokens=8",
    "rlaif.max_steps=2",
    "rlaif.batch_size=4",
    "rlaif.learning_rate=0.01",
    "rlaif.min_margin=0",  # a random model's reward scores are all near-ties
    "rl.max_steps=2",
    "rl.prompts=4",
    "rl.batch_size=4",
    "rl.num_generations=2",
    "rl.max_completion_length=8",
    "rl.learning_rate=0.01",
    "eval.limit=6",
    "eval.max_new_tokens=8",
    "gate_l2.min_loss_reduction=0",
    "gate_l2.min_format=0",
    "gate_l3.min_format=0",
    "gate_l3.min_win_rate=0",
    "publish.l3=rlaif",  # the tests publish the RLAIF run (the demo recipes publish DPO)
]


def tiny_recipe(model_dir: Path, workdir: Path, *extra: str) -> Recipe:
    data = ROOT / "adapters" / "datasets" / "it-helpdesk"
    return load_recipe(
        HELPDESK,
        [
            f"base_model={model_dir}",
            f"runs_dir={workdir / 'runs'}",
            f"publish.registry={workdir / 'registry'}",
            f"data.train={data / 'train.jsonl'}",
            f"data.held_out={data / 'held_out.jsonl'}",
            f"data.preferences={data / 'preferences.jsonl'}",
            f"data.preferences_held_out={data / 'preferences_held_out.jsonl'}",
            "threads=1",
            *TINY_OVERRIDES,
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("factory")


@pytest.fixture(scope="module")
def recipe(tiny_model_dir: Path, chain_dir: Path) -> Recipe:
    return tiny_recipe(tiny_model_dir, chain_dir)
