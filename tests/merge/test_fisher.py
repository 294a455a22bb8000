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


def test_normalise_scales_each_floored_fisher_by_one_over_its_norm_plus_floor():
    """FusionBench's merging_with_fisher_weights: c_k (F_k + ε) with c_k ∝ 1 / (‖F_k‖ + ε)."""
    tuned = [
        {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])},
        {"w": torch.tensor([5.0, 6.0]), "b": torch.tensor([4.0])},
    ]
    fishers = [
        {"w": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])},
        {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0])},
    ]
    held = [{k: torch.ones_like(v, dtype=torch.bool) for k, v in t.items()} for t in tuned]
    floor = 0.5
    merged = fisher_merge(tuned, fishers, held, floor=floor, normalise=True)
    c1, c2 = 1 / (5.0 + floor), 1 / (1.0 + floor)  # norms: ‖(3, 0, 4)‖ = 5, ‖(1, 0, 0)‖ = 1
    w1 = c1 * torch.tensor([3.5, 0.5])
    w2 = c2 * torch.tensor([1.5, 0.5])
    expected = (w1 * torch.tensor([1.0, 2.0]) + w2 * torch.tensor([5.0, 6.0])) / (w1 + w2)
    torch.testing.assert_close(merged["w"], expected)
    expected_b = (c2 * 0.5 * 4.0) / (c1 * 4.5 + c2 * 0.5)
    torch.testing.assert_close(merged["b"], torch.tensor([expected_b]))
