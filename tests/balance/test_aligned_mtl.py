"""Aligned-MTL: the conditioned gradient system has equal singular values."""

from __future__ import annotations

import pytest
import torch

from polytask.balance.aligned_mtl import AlignedMTL, balance_transformation


@pytest.mark.parametrize(("tasks", "dim", "seed"), [(2, 5, 0), (4, 7, 1), (5, 12, 2)])
def test_aligned_system_has_equal_singular_values(tasks, dim, seed):
    jacobian = torch.randn(tasks, dim, generator=torch.Generator().manual_seed(seed)).double()
    jacobian = jacobian * torch.logspace(-1, 1, tasks, dtype=torch.float64).unsqueeze(1)
    gramian = jacobian @ jacobian.T
    transform = balance_transformation(gramian)
    singular = torch.linalg.svdvals(transform @ jacobian)
    smallest = torch.linalg.svdvals(jacobian).min()
    torch.testing.assert_close(singular, smallest.expand(tasks))  # condition number 1
    weights = AlignedMTL(tasks).weights_from_gramian(gramian, torch.ones(tasks))
    # the update J^T w is the aligned system's sum of rows, (B J)^T 1
    torch.testing.assert_close(jacobian.T @ weights, (transform @ jacobian).sum(dim=0))


def test_rank_deficient_system_aligns_its_non_zero_components():
    jacobian = torch.randn(4, 2, generator=torch.Generator().manual_seed(3)).double()
    transform = balance_transformation(jacobian @ jacobian.T)
    singular = torch.linalg.svdvals(transform @ jacobian)
    torch.testing.assert_close(singular, torch.linalg.svdvals(jacobian).min().expand(2))
    weights = AlignedMTL(4).weights_from_gramian(jacobian @ jacobian.T, torch.ones(4))
    assert bool(torch.isfinite(weights).all())


def test_edge_cases():
    assert AlignedMTL(1).weights_from_gramian(torch.eye(1) * 4, torch.ones(1)).tolist() == [1.0]
    zero = AlignedMTL(3).weights_from_gramian(torch.zeros(3, 3), torch.ones(3))
    assert zero.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"balance\.options\.weights \(aligned_mtl\): unknown"):
        AlignedMTL(2, weights=[1, 2])
