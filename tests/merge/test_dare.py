"""DARE: dropping and rescaling keeps every entry's expectation."""

from __future__ import annotations

import math

import torch

from polytask.merge.base import MergeInputs
from polytask.merge.dare import DareOptions, DareTaskArithmetic, DareTies, drop_and_rescale
from polytask.merge.task_arithmetic import task_arithmetic


def test_drop_rate_and_rescaled_mean_match_their_expectation():
    rate, size = 0.7, 200_000
    dropped = drop_and_rescale(torch.ones(size), rate, torch.Generator().manual_seed(0))
    survivors = dropped != 0
    # each entry is 0 with probability p, 1 / (1 - p) otherwise: mean 1, variance p / (1 - p)
    std_of_mean = math.sqrt(rate / (1 - rate) / size)
    assert abs(float(dropped.mean()) - 1.0) < 4 * std_of_mean
    assert abs(float(survivors.float().mean()) - (1 - rate)) < 4 * math.sqrt(
        rate * (1 - rate) / size
    )
    assert torch.allclose(dropped[survivors], torch.full_like(dropped[survivors], 1 / (1 - rate)))


def test_dare_task_arithmetic_averages_to_task_arithmetic_over_seeds():
    generator = torch.Generator().manual_seed(1)
    base = {"w": torch.randn(40, 30, generator=generator)}
    tuned = [{"w": base["w"] + torch.randn(40, 30, generator=generator)} for _ in range(3)]
    held = [{"w": torch.ones(40, 30, dtype=torch.bool)} for _ in range(3)]
    inputs = MergeInputs(base, tuned, held, {"w": 0})
    expected = task_arithmetic(base, inputs.vectors(), 0.3)["w"]
    seeds = 400
    mean = (
        sum(
            DareTaskArithmetic(DareOptions(rate=0.5, scaling=0.3, seed=s)).merge(inputs)["w"]
            for s in range(seeds)
        )
        / seeds
    )
    # per entry: 0.3 * sum of 3 independent terms, each of variance tau^2 (p / (1 - p) = 1)
    vectors = torch.stack([t["w"] - base["w"] for t in tuned])
    std = 0.3 * torch.sqrt((vectors**2).sum(0) / seeds)
    assert float(((mean - expected).abs() / std).max()) < 5.0
    assert float((mean - expected).abs().mean()) < float(std.mean())


def test_dare_ties_runs_ties_on_the_dropped_vectors_and_is_seeded():
    base = {"w": torch.zeros(6)}
    tuned = [{"w": torch.tensor([1.0, -2.0, 3.0, 0.5, -1.0, 2.0])}, {"w": torch.ones(6)}]
    held = [{"w": torch.ones(6, dtype=torch.bool)}] * 2
    inputs = MergeInputs(base, tuned, held, {"w": 0})
    method = DareTies(DareTies.Options(rate=0.0, keep=1.0, scaling=1.0))
    # no drop, nothing trimmed: per entry the mean of the values agreeing with the sign
    # (entry 1: -2 + 1 < 0, so only -2 agrees)
    assert torch.equal(method.merge(inputs)["w"], torch.tensor([1.0, -2.0, 2.0, 0.75, 1.0, 1.5]))
    a = DareTies(DareTies.Options(rate=0.5, seed=3)).merge(inputs)["w"]
    b = DareTies(DareTies.Options(rate=0.5, seed=3)).merge(inputs)["w"]
    assert torch.equal(a, b)
