"""Recipes: one YAML file per department drives every `loragate train` step.

    recipe = load_recipe("adapters/recipes/it-helpdesk.yaml", ["sft.epochs=1", "lora.r=8"])

A recipe is typed (pydantic, unknown keys refused) and every field has help text (its
``Field(description=...)`` below; `adapters/recipes/*.yaml` show them in use). Command-line overrides are
`dotted.key=value` strings whose value is read as YAML (`sft.learning_rate=5e-4`,
`lora.target_modules=[q_proj,v_proj]`). Relative paths in a recipe are relative to
the current directory (the repository root in the documented commands).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.registry import VLLM_LORA_RANKS

from .data import FORMAT_CHECKS

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class RecipeError(ValueError):
    """A recipe file or override that cannot be used."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSpec(_Strict):
    train: Path = Field(
        description="dolly-schema rows (JSONL or CSV) to train on; `category` may be left out"
    )
    held_out: Path | None = Field(
        None,
        description="held-out rows; when absent, `held_out_fraction` of `train` is split off by seed "
        "(whole `group`s, when the rows name one)",
    )
    held_out_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="share held out when splitting")
    held_out_independent: Path | None = Field(
        None,
        description="held-out requests written independently of the training data, with `expected` fields",
    )
    preferences: Path | None = Field(
        None, description="DPO's preference pairs (prompt, chosen, rejected), JSONL"
    )
    preferences_reward: Path | None = Field(
        None, description="the reward model's pairs, disjoint from DPO's and the held-out ones (JSONL)"
    )
    preferences_held_out: Path | None = Field(None, description="held-out preference pairs, JSONL")
    off_domain: Path | None = Field(None, description="off-topic requests the department should not answer")
    template: Path | None = Field(
        None,
        description="the department's L1 template (none: adapters/templates/<department>.yaml, if any)",
    )
    forgetting: Path | None = Field(
        None,
        description="general prompts with checkable answers (none: the one in adapters/datasets/general)",
    )
    skip_bad_rows: bool = Field(
        False, description="leave out malformed rows (and report how many) instead of stopping at the first"
    )
    format_check: str | None = Field(
        None, description=f"a named format check, one of: {', '.join(sorted(FORMAT_CHECKS))}"
    )
    format_regex: str | None = Field(
        None, description="or the format as a regular expression the whole answer must match"
    )

    @field_validator("format_check")
    @classmethod
    def _known_check(cls, name: str | None) -> str | None:
        if name is not None and name not in FORMAT_CHECKS:
            raise ValueError(f"unknown format check {name!r} (known: {', '.join(sorted(FORMAT_CHECKS))})")
        return name

    def files(self) -> dict[str, Path]:
        """Every data file the section names, by field name."""
        return {name: value for name, value in self if isinstance(value, Path)}


class ReplaySpec(_Strict):
    file: Path = Field(description="general instruction rows (dolly schema) mixed into the SFT rows")
    fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="share of the SFT rows that are replay rows (drawn by seed)"
    )


class LoraSpec(_Strict):
    r: int = Field(16, description=f"LoRA rank; one vLLM serves: {sorted(VLLM_LORA_RANKS)}")
    alpha: int = Field(32, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout")
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), description="layers to adapt")

    def model_post_init(self, _: Any) -> None:
        if self.r not in VLLM_LORA_RANKS:
            raise ValueError(f"lora.r={self.r} is not a rank vLLM serves ({sorted(VLLM_LORA_RANKS)})")


class TrainSpec(_Strict):
    epochs: float = Field(1.0, gt=0, description="passes over the training data")
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: use epochs)")
    learning_rate: float = Field(5e-4, gt=0, description="peak learning rate (LoRA wants 5e-4..1e-3)")
    batch_size: int = Field(8, ge=1, description="rows per optimizer step (per device)")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of steps spent warming up")
    max_length: int = Field(512, ge=16, description="longest tokenized sequence (prompt + response)")
    save_steps: int = Field(20, ge=1, description="checkpoint every N steps (resume starts there)")
    logging_steps: int = Field(5, ge=1, description="log every N steps")


class SftSpec(TrainSpec):
    epochs: float = Field(2.0, gt=0, description="passes over the training data")
    template_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="share of the department's rows trained behind its L1 template, as the gateway "
        "serves them (system prompt and few-shot turns), so the adapter works with the template too",
    )


class RewardSpec(TrainSpec):
    learning_rate: float = Field(1e-3, gt=0, description="peak learning rate")


class PreferenceSpec(TrainSpec):
    method: Literal["dpo", "kto", "orpo"] = Field("dpo", description="preference loss")
    beta: float = Field(0.1, gt=0, description="strength of the tie to the reference (the L2 adapter)")
    sft_weight: float = Field(
        0.0, ge=0, description="DPO only: weight of an NLL term on the chosen answers (RPO); keeps the format"
    )
    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate")


class RlSpec(TrainSpec):
    algorithm: Literal["rloo", "grpo"] = Field("rloo", description="online RL algorithm")
    num_generations: int = Field(4, ge=2, description="completions sampled per prompt")
    max_completion_length: int = Field(96, ge=8, description="longest sampled completion")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    beta: float = Field(
        0.0, ge=0, description="KL weight against the L2 adapter (unset: adapters.rl.DEFAULT_KL; 0: none)"
    )
    max_steps: int = Field(16, description="optimizer steps (-1: use epochs)")
    prompts: int = Field(64, ge=1, description="training prompts to draw from the train split")
    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate")


class JudgeSpec(_Strict):
    kind: Literal["reward", "llm", "rule"] = Field(
        "reward", description="reward model, the base model prompted with `rubric`, or the format check"
    )
    rubric: str = Field(
        "A good answer follows the department's required format exactly and answers the request.",
        description="what the LLM judge is told makes an answer better",
    )
    format_first: bool = Field(
        True,
        description="with a format check: an answer in the department's format beats one that is not, "
        "whatever the reward or LLM judge says; the judge decides between two of the same standing",
    )


class RlaifSpec(PreferenceSpec):
    prompts: int = Field(96, ge=1, description="training prompts to sample answer pairs for")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the two answers")
    max_new_tokens: int = Field(128, ge=8, description="longest sampled answer")
    min_margin: float = Field(0.0, ge=0, description="drop pairs whose judge scores differ by less")


class EvalSpec(_Strict):
    max_new_tokens: int = Field(128, ge=8, description="longest greedy answer on held-out prompts")
    batch_size: int = Field(16, ge=1, description="prompts per generate call")
    limit: int | None = Field(None, description="evaluate at most this many held-out rows")
    rouge_categories: list[str] = Field(
        default_factory=lambda: ["closed_qa", "summarization", "information_extraction"],
        description="categories scored with ROUGE-L against the reference",
    )


class GateSpec(_Strict):
    min_loss_reduction: float = Field(
        0.0, description="L2: held-out response loss must fall at least this share below the base"
    )
    min_format: float = Field(0.0, ge=0, le=1, description="format compliance the adapter must reach")
    min_win_rate: float = Field(0.0, ge=0, le=1, description="L3: judge win rate over L2 it must reach")


class PublishSpec(_Strict):
    name: str = Field(description="adapter name in the registry")
    registry: Path = Field(Path("data/registry"), description="registry root the gateway serves from")
    l3: Literal["rlaif", "dpo", "rl"] = Field("rlaif", description="which L3 run `publish --level L3` takes")
    alias: str | None = Field(None, description="alias to promote the new version to (none: leave aliases)")


class Recipe(_Strict):
    department: str = Field(description="department name (also the format check's default name)")
    base_model: Path = Field(Path("data/models/smollm2-135m-instruct"), description="base model folder")
    seed: int = Field(6, description="seed for the split, sampling and training")
    runs_dir: Path = Field(Path("runs"), description="run folders go to RUNS_DIR/<department>/<step>")
    threads: int | None = Field(None, description="torch CPU threads (None: torch's default)")
    data: DataSpec
    replay: ReplaySpec | None = Field(
        None, description="general rows mixed into SFT against forgetting (none: no replay)"
    )
    lora: LoraSpec = Field(default_factory=LoraSpec)
    sft: SftSpec = Field(default_factory=SftSpec)
    reward: RewardSpec = Field(default_factory=RewardSpec)
    dpo: PreferenceSpec = Field(default_factory=PreferenceSpec)
    rl: RlSpec = Field(default_factory=RlSpec)
    rlaif: RlaifSpec = Field(default_factory=RlaifSpec)
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    gate_l2: GateSpec = Field(default_factory=GateSpec, description="what `publish --level L2` demands")
    gate_l3: GateSpec = Field(default_factory=GateSpec, description="what `publish --level L3` demands")
    publish: PublishSpec

    def run_dir(self, step: str) -> Path:
        return self.runs_dir / self.department / step

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """`a.b=value` strings set nested keys; values are parsed as YAML."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override {item!r} is not of the form key=value")
        node = raw
        *parents, leaf = key.strip().split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[leaf] = yaml.safe_load(value) if value.strip() else None
    return raw


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RecipeError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections")
    try:
        return Recipe.model_validate(apply_overrides(raw, overrides))
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise RecipeError(f"{path}: " + "; ".join(lines)) from None


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section's model for `Model` and `Model | None` annotations, else None."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def field_help(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    """`key (default): help` lines for every field, nested sections included."""
    lines = []
    for name, field in model.model_fields.items():
        section = _section_model(field.annotation)
        if section is not None:
            if not field.is_required() and field.get_default() is None:
                lines.append(f"{prefix}{name} (None): {field.description or ''}")
            lines += field_help(section, f"{prefix}{name}.")
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        lines.append(f"{prefix}{name} ({default}): {field.description or ''}")
    return lines
