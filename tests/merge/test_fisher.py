"""Fisher merging: equal Fishers average; the Fisher weighting is per element."""

from __future__ import annotations

import torch

from polytask.merge.fisher import fisher_merge


def test_equal_fishers_give_the_average():
    generator = torch.Generator().manual_seed(0)
    tuned = [{"w": torch.randn(4, 3, generator=generator)} for _ in range(3)]
    held = [{"w": torch.ones(4, 3, dtype=torch.bool)} for _ in tuned]
    fisher = torch.rand(4, 3, generator=generator) + 0.1
    merged = fisher_merge(tuned, [{"w": fisher}] * 3, held, floor=0.0)
    assert torch.allclose(merged["w"], sum(t["w"] for t in tuned) / 3, atol=1e-6)


def test_each_element_is_weighted_by_its_fisher_and_holders_only():
    tuned = [{"w": torch.tensor([1.0, 1.0, 5.0])}, {"w": torch.tensor([3.0, 4.0, 7.0])}]
    fishers = [{"w": torch.tensor([1.0, 0.0, 2.0])}, {"w": torch.tensor([3.0, 2.0, 2.0])}]
    held = [{"w": torch.tensor([True, True, False])}, {"w": torch.tensor([True, True, True])}]
    merged = fisher_merge(tuned, fishers, held, floor=0.0)
    # (1*1 + 3*3) / 4, (0*1 + 2*4) / 2, and only run 1 holds the last element
    assert torch.allclose(merged["w"], torch.tensor([2.5, 4.0, 7.0]))
    normalised = fisher_merge(tuned, fishers, held, floor=0.0, normalise=True)
    assert normalised["w"].shape == (3,)
