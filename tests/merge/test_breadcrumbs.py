"""Model Breadcrumbs: per row, the outliers and the small entries are masked."""

from __future__ import annotations

import torch

from polytask.merge.breadcrumbs import breadcrumbs, breadcrumbs_mask


def test_each_row_keeps_the_band_below_its_outliers():
    vector = torch.tensor([[10.0, -1.0, 5.0, -4.0, 0.5, 3.0, -2.0, 0.1, 7.0, -0.2]])
    # remove the top 10 % (10.0), then keep the 30 % largest of the rest: 7, 5, -4
    masked = breadcrumbs_mask(vector, keep=0.3, remove_top=0.1)
    expected = torch.tensor([[0.0, 0.0, 5.0, -4.0, 0.0, 0.0, 0.0, 0.0, 7.0, 0.0]])
    assert torch.equal(masked, expected)
    # rows are masked independently, along the last axis
    two_rows = torch.stack([vector[0], -vector[0].flip(0)])
    both = breadcrumbs_mask(two_rows, keep=0.3, remove_top=0.1)
    assert torch.equal(both[0], expected[0])
    assert torch.equal(both[1], -expected[0].flip(0))


def test_breadcrumbs_is_task_arithmetic_of_the_masked_vectors():
    base = {"w": torch.ones(1, 10)}
    vectors = [{"w": torch.arange(10.0).view(1, 10)}, {"w": -torch.arange(10.0).view(1, 10)}]
    merged = breadcrumbs(base, vectors, keep=0.2, remove_top=0.1, scaling=0.5)
    # each keeps 8 and 7 (9 removed): they cancel
    assert torch.equal(merged["w"], torch.ones(1, 10))
    merged = breadcrumbs(base, vectors[:1], keep=0.2, remove_top=0.1, scaling=0.5)
    expected = torch.ones(1, 10)
    expected[0, 7], expected[0, 8] = 1 + 3.5, 1 + 4.0
    assert torch.equal(merged["w"], expected)
