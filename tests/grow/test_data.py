"""Rows of several sources train together, each labelling its own tasks (NaN elsewhere)."""

from __future__ import annotations

import torch

from polytask.grow.data import concat, merge, sample
from tests.grow.conftest import binary_task, tiny_rows


def test_each_source_labels_only_its_own_tasks():
    first = tiny_rows(3, {"a": torch.ones(3)}, seed=1)
    second = tiny_rows(2, {"b": torch.zeros(2), "tags": torch.ones(2, 4)}, seed=2)
    rows = concat([first, second])
    assert len(rows) == 5
    assert torch.isnan(rows.labels["a"][3:]).all() and (rows.labels["a"][:3] == 1).all()
    assert rows.labels["tags"].shape == (5, 4) and torch.isnan(rows.labels["tags"][:3]).all()
    split = merge([first, second], [binary_task("a"), binary_task("b"), binary_task("c")])
    assert torch.isnan(split.labels["c"]).all() and len(split) == 5


def test_sample_keeps_a_sorted_subset_without_repeats():
    rows = tiny_rows(20, {"a": torch.arange(20.0)})
    kept = sample(rows, 7, torch.Generator().manual_seed(0)).labels["a"]
    assert len(kept) == 7 and len(set(kept.tolist())) == 7 and torch.equal(kept, kept.sort().values)
    assert sample(rows, None, torch.Generator()) is rows
