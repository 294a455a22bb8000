"""Nash-MTL: the weights solve the bargaining system G alpha = 1 / alpha, alpha > 0."""

from __future__ import annotations

import pytest
import torch

from polytask.balance.nash_mtl import NashMTL, nash_weights


def _gramian(tasks: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    jacobian = torch.randn(tasks, tasks + 3, generator=torch.Generator().manual_seed(seed))
    jacobian = jacobian.double() * scale
    return jacobian @ jacobian.T  # positive definite (full row rank)


@pytest.mark.parametrize(("tasks", "seed", "scale"), [(2, 0, 1.0), (3, 1, 1e3), (5, 2, 1e-3)])
def test_weights_solve_the_bargaining_system(tasks, seed, scale):
    gramian = _gramian(tasks, seed, scale)
    alpha = NashMTL(tasks).weights_from_gramian(gramian, torch.ones(tasks))
    assert bool((alpha > 0).all())
    torch.testing.assert_close(gramian @ alpha, 1.0 / alpha, rtol=1e-7, atol=0.0)


def test_authors_normalisation_rescales_the_solution():
    gramian = _gramian(3, 3, 10.0)
    frobenius = torch.linalg.matrix_norm(gramian)
    alpha = NashMTL(3, normalize_gramian=True).weights_from_gramian(gramian, torch.ones(3))
    torch.testing.assert_close((gramian / frobenius) @ alpha, 1.0 / alpha, rtol=1e-7, atol=0.0)
    torch.testing.assert_close(alpha, frobenius.sqrt() * nash_weights(gramian))


def test_zero_gradient_task_is_left_out_and_single_task_is_one():
    jacobian = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0], [-0.2, 1.0, 1.0]]).double()
    gramian = jacobian @ jacobian.T
    alpha = nash_weights(gramian)
    assert alpha[1].item() == 0.0
    kept = alpha[[0, 2]]
    torch.testing.assert_close(gramian[[0, 2]][:, [0, 2]] @ kept, 1.0 / kept, rtol=1e-7, atol=0.0)
    assert bool(torch.isfinite(nash_weights(torch.zeros(2, 2, dtype=torch.float64))).all())
    assert NashMTL(1).weights_from_gramian(torch.eye(1) * 9, torch.ones(1)).tolist() == [1.0]
    opposed = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)  # g2 = -g1
    assert bool(torch.isfinite(nash_weights(opposed)).all())


def test_options():
    assert NashMTL(2, every=25).describe()["every"] == 25
    with pytest.raises(ValueError, match=r"normalize_gramian .*expected true or false, got 'yes'"):
        NashMTL(2, normalize_gramian="yes")
    with pytest.raises(ValueError, match=r"options\.max_norm .*unknown key"):
        NashMTL(2, max_norm=1.0)
