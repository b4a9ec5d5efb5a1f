"""Run folders: one per department and step, resumable and idempotent.

    runs/<department>/<step>/config.yaml     the resolved recipe (and the step's options)
                             train.log        the step's log (also on the console)
                             log.jsonl        the trainer's logged figures, one line per logging step
                             checkpoints/     trainer checkpoints; a rerun resumes from the last one
                             adapter/         the result (a PEFT folder) once the step finished
                             metrics.json     written last: the step is done

A rerun with the same config finds `metrics.json` and does nothing; with another config it starts
afresh (stale checkpoints would not match). `force=True` always starts afresh. "The same config"
means the recipe sections the step reads (`STEP_SECTIONS`, plus department, base model, seed and
data) and the sha256 of its input adapters: tuning `rlaif` does not retrain `sft`, while a new
L2 adapter does make every L3 step and the evaluation run again. It also holds the sha256 of the
data files the step reads (`DATA_FILES`; the replay file for `sft`): editing `train.jsonl` in
place retrains the adapter and evaluates it again, while editing the held-out file only
re-evaluates.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from service.registry import WEIGHTS, sha256_of

from .recipe import Recipe

log = logging.getLogger("adapters")


class StepError(RuntimeError):
    """A step that cannot run (missing input run, failed gate, bad data)."""


COMMON_SECTIONS = ("department", "base_model", "seed", "data")
STEP_SECTIONS = {
    "sft": ("lora", "sft", "replay"),
    "reward": ("lora", "reward"),
    "dpo": ("dpo",),
    "rlaif": ("rlaif", "judge"),
    "rl": ("rl", "judge"),
    "eval": ("eval", "judge"),
}


# The recipe's `data` files each step reads (steps not listed read them all, e.g. `eval`).
DATA_FILES = {
    "sft": ("train",),
    "reward": ("preferences", "preferences_reward", "preferences_held_out"),
    "dpo": ("preferences",),
    "rlaif": ("train",),
    "rl": ("train",),
}


def data_digests(recipe: Recipe, step: str) -> dict[str, str]:
    """sha256 of each data file `step` reads, by recipe field (a missing file: "missing")."""
    files = recipe.data.files()
    names = DATA_FILES.get(step, tuple(files))
    chosen = {name: files[name] for name in names if name in files}
    if step == "sft" and recipe.replay is not None:
        chosen["replay"] = recipe.replay.file
    return {name: sha256_of(path) if path.is_file() else "missing" for name, path in sorted(chosen.items())}


class Run:
    def __init__(self, recipe: Recipe, step: str, inputs: dict[str, Any] | None = None):
        """`inputs`: what else the result depends on (the sha256 of the adapters it starts from)."""
        self.recipe = recipe
        self.step = step
        self.dir = recipe.run_dir(step)
        self.config = {
            "step": step,
            "options": inputs or {},
            "data_sha256": data_digests(recipe, step),
            "recipe": recipe.as_dict(),
        }
        self._handler: logging.Handler | None = None

    def _key(self, config: dict[str, Any] | None) -> Any:
        """The part of a config that decides the result."""
        if config is None:
            return None
        sections = (*COMMON_SECTIONS, *STEP_SECTIONS.get(self.step, ()))
        recipe = config.get("recipe", {})
        sections_used = _unset_dropped({name: recipe.get(name) for name in sections})
        return config.get("options"), config.get("data_sha256"), sections_used

    adapter = property(lambda self: self.dir / "adapter")
    checkpoints = property(lambda self: self.dir / "checkpoints")
    metrics_file = property(lambda self: self.dir / "metrics.json")
    config_file = property(lambda self: self.dir / "config.yaml")

    def done(self) -> bool:
        """Finished before with the same resolved config."""
        return self.metrics_file.is_file() and self._key(self._saved_config()) == self._key(self.config)

    def cached(self, force: bool = False) -> dict[str, Any] | None:
        """The figures of a finished run of the same config (unless `force`), else None."""
        if force or not self.done():
            return None
        log.info("%s: %s is done (same config); --force to run it again", self.step, self.dir)
        return self.metrics()

    def _saved_config(self) -> dict[str, Any] | None:
        if not self.config_file.is_file():
            return None
        return yaml.safe_load(self.config_file.read_text())

    def trained_on(self) -> Any:
        """The sha256 of the L2 adapter the finished run started from (None: unknown)."""
        options = (self._saved_config() or {}).get("options") or {}
        return options.get("sft")

    def start(self, force: bool = False) -> None:
        """Make the folder ready: keep checkpoints of the same config (resume), else start afresh."""
        if self.dir.exists() and (force or self._key(self._saved_config()) != self._key(self.config)):
            log.info("%s: starting afresh in %s", self.step, self.dir)
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_file.unlink(missing_ok=True)
        self.config_file.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._handler = logging.FileHandler(self.dir / "train.log")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self._handler)
        for name in ("adapters", "transformers", "trl"):
            logging.getLogger(name).setLevel(logging.INFO)

    def last_checkpoint(self) -> str | None:
        found = sorted(
            (p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
            key=lambda p: int(p.name.split("-")[-1]),
        )
        return str(found[-1]) if found else None

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        self.metrics_file.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
        return metrics

    def metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics_file.read_text())


def _unset_dropped(value: Any) -> Any:
    """Without None entries: a field added later at its default None changes no result."""
    if isinstance(value, dict):
        return {k: _unset_dropped(v) for k, v in value.items() if v is not None}
    return value


def input_digests(recipe: Recipe, *steps: str) -> dict[str, str]:
    """sha256 of the adapters of finished earlier steps (a step's inputs)."""
    return {step: sha256_of(finished_adapter(recipe, step) / WEIGHTS) for step in steps}


def finished_adapter(recipe: Recipe, step: str) -> Path:
    """The adapter folder of an earlier step's finished run, or a clear error."""
    folder = recipe.run_dir(step)
    if not (folder / "metrics.json").is_file() or not (folder / "adapter").is_dir():
        raise StepError(
            f"step {step!r} has not finished for {recipe.department} (no {folder}/adapter); "
            f"run `loragate train {step} --recipe ...` first"
        )
    return folder / "adapter"
