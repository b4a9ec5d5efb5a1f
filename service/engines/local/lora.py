"""LoRA adapters held in the embedded model with PEFT.

Adapters are loaded on first use and the least recently used ones are evicted
beyond ``max_loaded`` (never one that a running or admitted request uses).
One forward pass may mix rows for different adapters and the base model:
PEFT's ``adapter_names`` picks each row's adapter. Everything here runs on the
scheduler's worker thread, between decode steps.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from ..base import EngineEvents

log = logging.getLogger(__name__)

BASE_ROW = "__base__"  # PEFT's name for "no adapter" in adapter_names


class LoraSlots:
    def __init__(self, model: PreTrainedModel, max_loaded: int, events: EngineEvents | None = None):
        self.base = model
        self.events = events or EngineEvents()
        self.model: Any = model  # becomes a PeftModel at the first adapter
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, str] = OrderedDict()  # name -> PEFT adapter key
        self._serial = 0
        self.loads = 0
        self.evictions = 0
        self.last_load_seconds = 0.0

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    def ensure(self, name: str, path: Path, in_use: set[str]) -> None:
        """Make ``name`` usable now; evict others beyond the limit."""
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return
        start = time.perf_counter()
        self._serial += 1
        key = f"lora{self._serial}"  # PEFT keys live in ModuleDicts: no dots or @ allowed
        if self.model is self.base:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.base, str(path), adapter_name=key).eval()
        else:
            self.model.load_adapter(str(path), adapter_name=key)
            self.model.eval()
        self._loaded[name] = key
        self.loads += 1
        self.last_load_seconds = time.perf_counter() - start
        log.info("loaded adapter %s from %s in %.2fs", name, path, self.last_load_seconds)
        self.events.adapter_loaded(name, self.last_load_seconds)
        self._evict(in_use | {name})

    def _evict(self, keep: set[str]) -> None:
        for victim in list(self._loaded):
            if len(self._loaded) <= self.max_loaded:
                return
            if victim not in keep:
                with warnings.catch_warnings():  # "adapter X was active": we pick adapters per row anyway
                    warnings.simplefilter("ignore", UserWarning)
                    self.model.delete_adapter(self._loaded[victim])
                del self._loaded[victim]
                self.evictions += 1
                log.info("evicted adapter %s", victim)
                self.events.adapter_evicted(victim)

    def forward_kwargs(self, adapters: Sequence[str | None]) -> dict[str, Any]:
        """Per-row adapter choice for one forward pass (nothing while no adapter is loaded)."""
        if self.model is self.base:
            return {}
        return {"adapter_names": [self._loaded[a] if a else BASE_ROW for a in adapters]}
