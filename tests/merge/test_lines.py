"""LiNeS: the merged task vector scaled linearly in depth, α from the paper's norm ratio."""

from __future__ import annotations

import torch

from polytask.merge.lines import layer_scales, lines
from polytask.merge.vectors import layer_depths


def test_scales_rise_linearly_from_alpha_to_alpha_plus_beta():
    scales = layer_scales({"a": 0, "b": 1, "c": 1, "d": 4}, alpha=0.2, beta=0.6)
    assert scales == {"a": 0.2, "b": 0.5, "c": 0.5, "d": 0.8}


def test_layers_are_counted_in_registration_order_and_a_layer_shares_its_depth():
    keys = [
        "encoders.0.conv1.weight",
        "encoders.0.conv1.bias",
        "arch.levels.0.experts.weights.0",
        "arch.levels.0.experts.weights.1",
        "arch.levels.0.experts.biases.0",
        "arch.levels.0.experts.biases.1",
    ]
    assert list(layer_depths(keys).values()) == [0, 0, 1, 2, 1, 2]


def test_summed_vectors_start_at_their_average_and_grow_with_depth():
    base = {"first": torch.zeros(3), "last": torch.zeros(3)}
    vectors = [{"first": torch.ones(3) * k, "last": torch.ones(3) * k} for k in (1.0, 2.0)]
    merged = lines(base, vectors, {"first": 0, "last": 1}, beta=0.5)
    # τ_MTL = sum = 3; α = (||sum|| / ||sum||) / K = 1/2: the first layer gets the average
    assert torch.allclose(merged["first"], torch.full((3,), 1.5))
    assert torch.allclose(merged["last"], torch.full((3,), 3.0))
    fixed = lines(base, vectors, {"first": 0, "last": 1}, beta=0.0, alpha=1.0)
    assert torch.allclose(fixed["last"], torch.full((3,), 3.0))
