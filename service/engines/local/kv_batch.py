"""The running batch's key/value cache, with rows joining and leaving between steps.

Rows are left-padded to a common length. A new group of rows (prefilled on its
own) is merged by padding the shorter side on the left; finished rows are
dropped, and columns that became padding in every row are trimmed. The
attention mask marks real tokens; each row's next position is its count of
real tokens, so rotary positions stay right whatever the padding.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class KVBatch:
    def __init__(self, cache: DynamicCache, mask: torch.Tensor):
        self.cache = cache
        self.mask = mask  # [rows, columns], 1 where a real token is cached

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def columns(self) -> int:
        return self.mask.shape[1]

    def positions(self) -> torch.Tensor:
        """Position of each row's next token, shape [rows, 1]."""
        return self.mask.sum(dim=1, keepdim=True)

    def _slack_layers(self) -> list[SlackLayer]:
        # slack_cache() fills the cache with SlackLayers, prefilled before a KVBatch holds them; transformers
        # types Cache.layers as any kind of layer (linear-attention ones have no keys/values)
        return cast("list[SlackLayer]", self.cache.layers)

    def _layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.keys, layer.values) for layer in self._slack_layers()]

    def _set_layers(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for layer, (k, v) in zip(self._slack_layers(), kv, strict=True):
            layer.keys, layer.values = k, v

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (indices, possibly repeated), then trim all-padding columns."""
        self.mask = self.mask.index_select(0, rows)
        self._set_layers([(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self._layers()])
        self._trim()

    def _trim(self) -> None:
        if self.rows == 0:
            return
        filled = self.mask.any(dim=0)
        first = int(torch.argmax(filled.int())) if bool(filled.any()) else self.columns
        if first > 0:
            self.mask = self.mask[:, first:]
            self._set_layers([(k[:, :, first:], v[:, :, first:]) for k, v in self._layers()])

    def extend(self, other: KVBatch) -> None:
        """Append ``other``'s rows below this batch's rows."""
        width = max(self.columns, other.columns)
        mine, theirs = self._layers(), other._layers()
        merged = []
        for (k1, v1), (k2, v2) in zip(mine, theirs, strict=True):
            merged.append(
                (
                    torch.cat([_left_pad(k1, width), _left_pad(k2, width)], dim=0),
                    torch.cat([_left_pad(v1, width), _left_pad(v2, width)], dim=0),
                )
            )
        self._set_layers(merged)
        self.mask = torch.cat([_left_pad_mask(self.mask, width), _left_pad_mask(other.mask, width)])


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - t.shape[-2]
    return t if missing == 0 else F.pad(t, (0, 0, missing, 0))


def _left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return mask if missing == 0 else F.pad(mask, (missing, 0))


# transformers leaves CacheLayerMixin.__init_subclass__ unannotated
class SlackLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A DynamicLayer that writes new tokens into spare capacity instead of concatenating.

    ``torch.cat`` on every step copies the whole cache (a fifth of a decode step on a
    small CPU model); here a step writes one column and ``keys``/``values`` are views of
    the first ``length`` columns. When ``KVBatch`` replaces the tensors (rows joining or
    leaving), the next update copies them into a fresh buffer with room to grow.
    """

    # None only until the first update, which initializes the layer before reading them (CacheLayerMixin
    # types them optional for every kind of layer)
    keys: torch.Tensor
    values: torch.Tensor
    _kbuf: torch.Tensor | None = None
    _vbuf: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, new = self.keys.shape[-2] if self.keys.dim() == 4 else 0, key_states.shape[-2]
        kbuf, vbuf = self._kbuf, self._vbuf
        if kbuf is None or vbuf is None or not self._owns_views(kbuf) or length + new > kbuf.shape[-2]:
            kbuf, vbuf = self._regrow(key_states, value_states, length, length + new)
        kbuf[:, :, length : length + new] = key_states
        vbuf[:, :, length : length + new] = value_states
        self.keys = kbuf[:, :, : length + new]
        self.values = vbuf[:, :, : length + new]
        return self.keys, self.values

    def _owns_views(self, kbuf: torch.Tensor) -> bool:
        return (
            self.keys.dim() == 4
            and self.keys.data_ptr() == kbuf.data_ptr()
            and self.keys.shape[0] == kbuf.shape[0]
        )

    def _regrow(
        self, k: torch.Tensor, v: torch.Tensor, length: int, needed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        capacity = max(needed + _SLACK, 2 * needed) if needed > _SLACK else needed + _SLACK
        shape = (k.shape[0], k.shape[1], capacity, k.shape[3])
        kbuf, vbuf = k.new_empty(shape), v.new_empty(shape)
        if length:
            kbuf[:, :, :length] = self.keys
            vbuf[:, :, :length] = self.values
        self._kbuf, self._vbuf = kbuf, vbuf
        return kbuf, vbuf


_SLACK = 128


def slack_cache(config: Any) -> DynamicCache:
    cache = DynamicCache(config=config)
    # transformers leaves CacheLayerMixin.__init__ unannotated
    cache.layers = [SlackLayer() for _ in cache.layers]  # type: ignore[no-untyped-call]
    return cache
