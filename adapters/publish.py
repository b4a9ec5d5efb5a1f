"""`loragate train publish`: an evaluated adapter into the gateway's registry, behind a gate.

    loragate train publish --recipe adapters/recipes/it-helpdesk.yaml --level L2
    loragate train publish --recipe adapters/recipes/it-helpdesk.yaml --level L3

Refuses (exit status 1, every reason listed) when:
- the adapter is not one vLLM would serve (`service.registry.check_servable`: rank in vLLM's set,
  no modules_to_save, no DoRA, no LoRA bias, no added tokens) or was trained on another base;
- the evaluation is missing or was made on other weights (run `train eval` again);
- the recipe's gate (`gate_l2` / `gate_l3`) fails: loss reduction against the base, format
  compliance, and for L3 the judge's win rate over L2.
Otherwise the registry copies the adapter in as a new version with a manifest that carries its
sha256 and evaluation figures. Publishing the same weights again returns the existing version.

The registry is the recipe's ``publish.registry``: a folder, or ``s3://bucket/prefix`` (object
storage that every gateway reads; the endpoint and credentials as the gateway finds them:
LORAGATE_S3_ENDPOINT_URL, boto3's AWS chain; see docs/registry.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import yaml

from service.config import Settings
from service.registry import CONFIG, WEIGHTS, Adapter, Registry, check_servable, open_store, sha256_of
from service.registry_store import RegistryStore

from .recipe import GateSpec, Recipe
from .runs import StepError, finished_adapter

log = logging.getLogger("adapters")
SERVED_MODEL_NAME = str(Settings.model_fields["model_name"].default)


class PublishRefused(StepError):
    """The adapter may not go into the registry; the message lists every reason."""


def gate_failures(gate: GateSpec, figures: dict[str, Any], win: dict[str, Any] | None) -> list[str]:
    failures = []
    reduction = figures.get("loss_reduction")
    if gate.min_loss_reduction and (reduction is None or reduction < gate.min_loss_reduction):
        failures.append(f"held-out loss reduction {reduction} is below the gate's {gate.min_loss_reduction}")
    compliance = figures.get("format_compliance")
    if gate.min_format and (compliance is None or compliance < gate.min_format):
        failures.append(f"format compliance {compliance} is below the gate's {gate.min_format}")
    if gate.min_win_rate:
        rate = None if win is None else win.get("low", win["win_rate"])  # the interval's lower bound
        if rate is None or rate < gate.min_win_rate:
            failures.append(f"the win rate's lower bound {rate} is below the gate's {gate.min_win_rate}")
    return failures


def _evaluation(recipe: Recipe, step: str, adapter: Path) -> dict[str, Any]:
    """The eval report, if it was made on exactly these weights."""
    folder = recipe.run_dir("eval")
    if not (folder / "metrics.json").is_file():
        raise PublishRefused(f"no evaluation for {recipe.department}: run `loragate train eval` first")
    evaluated = yaml.safe_load((folder / "config.yaml").read_text()).get("options", {})
    if evaluated.get(step) != sha256_of(adapter / WEIGHTS):
        raise PublishRefused(
            f"the evaluation does not cover the current {step} adapter: run `train eval` again"
        )
    return dict(json.loads((folder / "metrics.json").read_text()))


def registry_location(location: Path | str) -> str:
    """A recipe's registry as a folder or an s3:// URL (its ``Path`` field folds ``s3://`` to ``s3:/``)."""
    text = str(location)
    return "s3://" + text[len("s3:/") :].lstrip("/") if text.startswith("s3:/") else text


def registry_for(recipe: Recipe, model_name: str = SERVED_MODEL_NAME) -> Registry:
    """The recipe's registry; with ``LORAGATE_STATE_URL`` set, its aliases in that database, as the
    gateways read them (service/shared_state/aliases.py)."""
    base = recipe.base_model
    location = registry_location(recipe.publish.registry)
    settings = Settings()  # the S3 endpoint, sync cache and state database, as this host's gateway has them
    store: RegistryStore = open_store(
        location if location.startswith("s3://") else Path(location),
        cache_dir=settings.registry_cache_dir,
        endpoint_url=settings.s3_endpoint_url,
    )
    if settings.state_url:
        from service.shared_state.aliases import SharedAliases
        from service.shared_state.database import StateDatabase

        store = SharedAliases(store, StateDatabase(settings.state_url))
    return Registry(store, model_name, base_aliases=(str(base), base.name))


def publish(recipe: Recipe, level: Literal["L2", "L3"], model_name: str = SERVED_MODEL_NAME) -> Adapter:
    step = "sft" if level == "L2" else recipe.publish.l3
    adapter = finished_adapter(recipe, step)
    check_servable(adapter)  # AdapterRejected names every problem
    config = json.loads((adapter / CONFIG).read_text())
    trained_on = Path(str(config.get("base_model_name_or_path", "")))
    if trained_on.name != recipe.base_model.name:
        raise PublishRefused(f"{adapter} was trained on {trained_on}, not the recipe's {recipe.base_model}")
    report = _evaluation(recipe, step, adapter)
    figures = report["variants"][step]
    win = report["win_rates"].get(f"{step}_vs_sft", {}).get(report["judge"]) if level == "L3" else None
    gate = recipe.gate_l2 if level == "L2" else recipe.gate_l3
    failures = gate_failures(gate, figures, win)
    if failures:
        raise PublishRefused(f"{recipe.department} {level} ({step}) fails its gate: " + "; ".join(failures))
    registry = registry_for(recipe, model_name)
    digest = sha256_of(adapter / WEIGHTS)
    for existing in registry.versions(recipe.publish.name):
        if existing.manifest.sha256 == digest and existing.manifest.level == level:
            log.info("publish: %s already holds these weights", existing.ref)
            return _promote(registry, recipe, existing)
    evaluation = {
        "held_out_rows": report["held_out_rows"],
        "base": {k: v for k, v in report["variants"]["base"].items() if k != "per_category"},
        level: figures,
        "win_rates": {k: v for k, v in report["win_rates"].items() if k.startswith(f"{step}_vs_")},
        "judge": report["judge"],
        "gate": gate.model_dump(),
    }
    published = registry.publish(
        adapter,
        name=recipe.publish.name,
        level=level,
        recipe={"department": recipe.department, "step": step, "config": recipe.as_dict()},
        evaluation=evaluation,
    )
    log.info("publish: %s (sha256 %s...)", published.ref, digest[:12])
    return _promote(registry, recipe, published)


def _promote(registry: Registry, recipe: Recipe, adapter: Adapter) -> Adapter:
    if recipe.publish.alias:
        registry.promote(recipe.publish.alias, adapter.ref)
    return adapter
