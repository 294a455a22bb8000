"""Replay appends rows drawn from the old tasks' buffers, labelled for their own task only."""

from __future__ import annotations

import math

import torch

from polytask.grow.strategies.replay import Replayed
from tests.grow.conftest import tiny_rows


def test_replayed_rows_are_appended_with_their_own_labels():
    memory = tiny_rows(5, {"old": torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])}, seed=3)
    hook = Replayed(memory, ["old"], 4, torch.Generator().manual_seed(0))
    batch = tiny_rows(6, {"new": torch.ones(6), "old": torch.full((6,), float("nan"))})
    features, labels = hook.batch(batch.features, batch.labels)
    assert len(features) == 10
    assert torch.isnan(labels["new"][6:]).all() and not torch.isnan(labels["old"][6:]).any()
    for row in range(6, 10):  # every appended row is one of the memory's, with its label
        match = (memory.features.numeric == features.numeric[row]).all(1).nonzero().flatten()
        assert len(match) >= 1
        assert labels["old"][row] == memory.labels["old"][match[0]]
    assert not math.isnan(float(labels["new"][0]))
