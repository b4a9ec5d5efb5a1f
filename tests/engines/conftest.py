"""Fixtures for the embedded engine: the tiny model's tokenizer, a reference model, a loaded engine."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.gates import GatedEngine, GatedScheduler


@pytest.fixture(scope="package")
def model_dir(wide_model_dir: Path) -> Path:
    return wide_model_dir


@pytest.fixture(scope="package")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="package")
def reference_model(model_dir: Path) -> Any:
    """The same weights as the engine's, loaded separately for ``generate``."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="package")
async def engine(model_dir: Path) -> AsyncIterator[GatedEngine]:
    """One loaded float32 engine for the package, its gate open unless a test holds it (``held``)."""
    local = GatedEngine(
        model_dir, model_name="tiny", dtype="float32", device="cpu", max_batch_size=8, gate=threading.Event()
    )
    local.gate.set()
    local.load()
    yield local
    await local.close()


@pytest.fixture
def held(engine: GatedEngine) -> Iterator[GatedScheduler]:
    """The engine's scheduler, its gate clear until the test opens it (``queue_behind``) or ends."""
    assert engine.scheduler is not None
    engine.gate.clear()
    yield engine.scheduler
    engine.gate.set()
