"""MGDA: the update is the min-norm point of the convex hull of the task gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from polytask.balance import BALANCERS
from polytask.balance.mgda import MGDA, MGDAUB


def _reference_min_norm(vectors: np.ndarray) -> np.ndarray:
    """An independent solve on explicit vectors [P, n]: min |sum w_t g_t|^2 on the simplex."""
    size = vectors.shape[0]
    result = minimize(
        lambda w: float(np.sum((w @ vectors) ** 2)),
        np.full(size, 1.0 / size),
        jac=lambda w: 2.0 * vectors @ (w @ vectors),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * size,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return result.x @ vectors


def _weights(jacobian: torch.Tensor, **options) -> torch.Tensor:
    losses = torch.ones(jacobian.shape[0], dtype=torch.float64)
    return MGDA(jacobian.shape[0], **options).weights_from_gramian(jacobian @ jacobian.T, losses)


@pytest.mark.parametrize(("tasks", "dim", "seed"), [(2, 5, 0), (4, 6, 1), (5, 3, 2), (6, 10, 3)])
def test_direction_is_the_min_norm_point_and_meets_kkt(tasks, dim, seed):
    jacobian = torch.randn(tasks, dim, generator=torch.Generator().manual_seed(seed)).double()
    jacobian[0] -= 1.5 * jacobian[1]  # make sure some gradients conflict
    weights = _weights(jacobian)
    direction = jacobian.T @ weights
    reference = _reference_min_norm(jacobian.numpy())
    np.testing.assert_allclose(direction.numpy(), reference, atol=1e-6)
    # KKT of min |J^T w|^2 on the simplex: <g_t, d> >= |d|^2, with equality where w_t > 0
    assert bool((weights >= 0).all()) and float(weights.sum()) == pytest.approx(1.0)
    inner = jacobian @ direction
    norm_sq = float(direction @ direction)
    assert bool((inner >= norm_sq - 1e-9).all())
    support = weights > 1e-9
    np.testing.assert_allclose(inner[support].numpy(), norm_sq, atol=1e-9)


def test_zero_in_the_hull_gives_a_zero_direction():
    g, h = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, 1.0, 3.0])
    jacobian = torch.stack([g, -g, h]).double()
    weights = _weights(jacobian)
    assert float((jacobian.T @ weights).norm()) < 1e-9
    assert bool(torch.isfinite(weights).all()) and float(weights.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["l2", "loss", "loss+"])
def test_normalisations_follow_sener_and_koltun(kind):
    """Weights are the min-norm weights of g_t / n_t, applied to the original losses."""
    generator = torch.Generator().manual_seed(4)
    jacobian = torch.randn(3, 5, generator=generator).double() * torch.tensor([[1.0], [10], [0.1]])
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    norms = jacobian.norm(dim=1)
    scale = {"l2": norms, "loss": losses, "loss+": losses * norms}[kind]
    unit = jacobian / scale.unsqueeze(1)
    weights = MGDA(3, normalize=kind).weights_from_gramian(jacobian @ jacobian.T, losses)
    np.testing.assert_allclose(
        (unit.T @ weights).numpy(), _reference_min_norm(unit.numpy()), atol=1e-6
    )


def test_registry_modes_and_edge_cases():
    assert BALANCERS.get("mgda") is MGDA and BALANCERS.get("mgda_ub") is MGDAUB
    assert MGDA(2).mode == "exact" and MGDAUB(2).mode == "fast"
    assert MGDAUB(2, mode="exact").mode == "exact"
    assert MGDA(2, normalize="l2").describe()["normalize"] == "l2"
    one = MGDA(1).weights_from_gramian(torch.tensor([[4.0]]), torch.ones(1))
    assert one.tolist() == [1.0]
    with pytest.raises(ValueError, match=r"normalize .*got 'los' \(did you mean 'loss'\?\)"):
        MGDA(2, normalize="los")
