"""The cost said before training: parameters, and 6 FLOPs per dense parameter and row."""

from __future__ import annotations

from torch import nn

from polytask.train.estimate import LARGE_PARAMETERS, estimate


def test_estimate_counts_dense_work_and_leaves_lookups_out():
    model = nn.Sequential(nn.Embedding(100, 4), nn.Linear(4, 3))
    found = estimate(model, rows=1000)
    assert found.parameters == 400 + 15 and found.embedding_parameters == 400
    assert found.epoch_flop == 6 * 15 * 1000
    assert not found.large
    assert "415 parameters (400 in embedding tables) for 2 tasks" in found.line(2, 1000)


def test_a_large_model_is_flagged():
    model = nn.Linear(LARGE_PARAMETERS // 1000 + 1, 1000)
    assert estimate(model, rows=1).large
    frozen = nn.Linear(10, 10)
    frozen.weight.requires_grad_(False)
    assert estimate(frozen, rows=1).parameters == 10
