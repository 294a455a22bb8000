"""UPGrad: per-task projections onto the dual cone, averaged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from polytask.balance.upgrad import UPGrad, dual_cone_solutions


def _jacobian(tasks: int, dim: int, seed: int) -> torch.Tensor:
    jacobian = torch.randn(tasks, dim, generator=torch.Generator().manual_seed(seed)).double()
    jacobian[1] = -0.9 * jacobian[0] + 0.3 * jacobian[1]  # a conflict
    return jacobian


@pytest.mark.parametrize(("tasks", "dim", "seed"), [(2, 3, 0), (4, 6, 1), (5, 3, 2), (6, 9, 3)])
def test_each_solution_meets_its_qp_kkt_conditions(tasks, dim, seed):
    jacobian = _jacobian(tasks, dim, seed)
    gramian = jacobian @ jacobian.T
    scale = float(torch.diagonal(gramian).max())
    solutions = dual_cone_solutions(gramian)
    for i, v in enumerate(solutions):
        slack = v - torch.eye(tasks, dtype=torch.float64)[i]  # v >= e_i
        multipliers = gramian @ v  # gradient of v^T G v / 2: the KKT multipliers
        assert bool((slack >= -1e-10).all())
        assert bool((multipliers >= -1e-9 * scale).all())
        assert float((slack * multipliers).abs().max()) <= 1e-9 * scale


@pytest.mark.parametrize(("tasks", "dim", "seed"), [(3, 4, 4), (4, 6, 5)])
def test_projections_match_an_independent_primal_solve(tasks, dim, seed):
    """J^T v_i is the projection of g_i onto {x : J x >= 0}, solved in parameter space."""
    jacobian = _jacobian(tasks, dim, seed)
    solutions = dual_cone_solutions(jacobian @ jacobian.T)
    vectors = jacobian.numpy()
    for i in range(tasks):
        result = minimize(
            lambda x, i=i: float(np.sum((x - vectors[i]) ** 2)),
            vectors[i],
            jac=lambda x, i=i: 2 * (x - vectors[i]),
            method="SLSQP",
            constraints=[{"type": "ineq", "fun": lambda x: vectors @ x, "jac": lambda x: vectors}],
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        np.testing.assert_allclose((jacobian.T @ solutions[i]).numpy(), result.x, atol=1e-6)


def test_combined_direction_conflicts_with_no_task():
    for seed in range(4):
        jacobian = _jacobian(5, 4, seed)
        gramian = jacobian @ jacobian.T
        weights = UPGrad(5).weights_from_gramian(gramian, torch.ones(5))
        torch.testing.assert_close(weights, dual_cone_solutions(gramian).mean(dim=0))
        assert bool((jacobian @ (jacobian.T @ weights) >= -1e-9).all())


def test_non_conflicting_gradients_are_averaged_and_edge_cases():
    jacobian = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)).double() + 0.1
    weights = UPGrad(3).weights_from_gramian(jacobian @ jacobian.T, torch.ones(3))
    torch.testing.assert_close(weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert UPGrad(1).weights_from_gramian(torch.eye(1), torch.ones(1)).tolist() == [1.0]
    zero = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert bool(torch.isfinite(UPGrad(2).weights_from_gramian(zero, torch.ones(2))).all())
