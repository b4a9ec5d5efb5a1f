"""KVBatch: rows of a left-padded cache joining, leaving, and padding columns trimmed."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from service.engines.local.kv_batch import KVBatch

LAYERS, HEADS, DIM = 2, 2, 3


def make_batch(lengths: list[int], width: int, seed: int) -> KVBatch:
    """Rows with ``lengths`` real tokens, left-padded to ``width``; padding slots are zero."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, width - length :] = 1
    cache = DynamicCache()
    for layer in range(LAYERS):
        keys = torch.randn(len(lengths), HEADS, width, DIM, generator=generator)
        values = torch.randn(len(lengths), HEADS, width, DIM, generator=generator)
        real = mask[:, None, :, None].float()
        cache.update(keys * real, values * real, layer)
    return KVBatch(cache, mask)


def real_tokens(batch: KVBatch, row: int) -> list[torch.Tensor]:
    """Each layer's keys and values of one row's real tokens, in order."""
    keep = batch.mask[row].bool()
    return [t[row][:, keep] for layer in batch.cache.layers for t in (layer.keys, layer.values)]


def assert_consistent(batch: KVBatch) -> None:
    for layer in batch.cache.layers:
        assert layer.keys.shape[0] == layer.values.shape[0] == batch.rows
        assert layer.keys.shape[2] == layer.values.shape[2] == batch.columns


def test_extend_left_pads_the_narrower_side() -> None:
    a, b = make_batch([3, 1], width=3, seed=0), make_batch([5], width=5, seed=1)
    before = [real_tokens(a, 0), real_tokens(a, 1), real_tokens(b, 0)]
    a.extend(b)
    assert_consistent(a)
    assert (a.rows, a.columns) == (3, 5)
    assert a.mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
    assert a.positions().tolist() == [[3], [1], [5]]
    for row, expected in enumerate(before):
        assert all(torch.equal(x, y) for x, y in zip(real_tokens(a, row), expected, strict=True))
    assert not a.cache.layers[0].keys[0, :, :2].any()  # the new left columns are zero padding


def test_extend_with_a_wider_running_batch_pads_the_new_rows() -> None:
    a, b = make_batch([4], width=4, seed=2), make_batch([2, 1], width=2, seed=3)
    a.extend(b)
    assert_consistent(a)
    assert a.mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]


def test_select_reorders_repeats_and_trims_all_padding_columns() -> None:
    batch = make_batch([3, 1], width=3, seed=4)
    batch.extend(make_batch([5], width=5, seed=5))
    short, medium = real_tokens(batch, 1), real_tokens(batch, 0)
    batch.select(torch.tensor([0, 1]))  # the 5-token row leaves: two columns are padding everywhere
    assert_consistent(batch)
    assert batch.mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert all(torch.equal(x, y) for x, y in zip(real_tokens(batch, 0), medium, strict=True))
    batch.select(torch.tensor([1, 1]))  # a row repeated, as for n choices
    assert_consistent(batch)
    assert batch.mask.tolist() == [[1], [1]]
    for row in (0, 1):
        assert all(torch.equal(x, y) for x, y in zip(real_tokens(batch, row), short, strict=True))


def test_select_keeps_columns_that_one_row_still_uses() -> None:
    batch = make_batch([2, 4], width=4, seed=6)
    batch.select(torch.tensor([1, 0]))
    assert batch.mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert batch.positions().tolist() == [[4], [2]]


def test_trimming_after_a_decode_step_keeps_the_decoded_column() -> None:
    batch = make_batch([1], width=1, seed=7)
    batch.extend(make_batch([3], width=3, seed=8))
    batch.mask = torch.cat([batch.mask, batch.mask.new_ones((2, 1))], dim=1)  # one decode step
    for layer in batch.cache.layers:
        layer.keys = torch.cat([layer.keys, torch.ones(2, HEADS, 1, DIM)], dim=2)
        layer.values = torch.cat([layer.values, torch.ones(2, HEADS, 1, DIM)], dim=2)
    batch.select(torch.tensor([0]))
    assert_consistent(batch)
    assert batch.mask.tolist() == [[1, 1]]
    assert batch.positions().tolist() == [[2]]
