"""CAGrad: the direction solves max_d min_i <g_i, d> within |d - g0| <= c |g0|."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from polytask.balance.cagrad import CAGrad


def _reference_primal(vectors: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """Independent solve of the primal on explicit vectors [P, n], over (d, t):
    max t  s.t.  <g_i, d> >= t,  |d - g0|^2 <= c^2 |g0|^2."""
    g0 = vectors.mean(axis=0)
    radius_sq = c**2 * float(g0 @ g0)
    start = np.append(g0, (vectors @ g0).min())
    constraints = [
        {"type": "ineq", "fun": lambda x: vectors @ x[:-1] - x[-1]},
        {"type": "ineq", "fun": lambda x: radius_sq - float(np.sum((x[:-1] - g0) ** 2))},
    ]
    result = minimize(
        lambda x: -x[-1],
        start,
        method="SLSQP",
        constraints=constraints,
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    return result.x[:-1], float(result.x[-1])


@pytest.mark.parametrize(
    ("tasks", "seed", "c"), [(2, 0, 0.4), (3, 1, 0.4), (4, 2, 0.8), (8, 4, 0.2), (12, 3, 0.5)]
)
def test_direction_solves_the_primal(tasks, seed, c):
    jacobian = torch.randn(tasks, 6, generator=torch.Generator().manual_seed(seed)).double()
    jacobian[1] = -0.7 * jacobian[0] + 0.5 * jacobian[1]  # conflicting
    weights = CAGrad(tasks, c=c, rescale=0).weights_from_gramian(
        jacobian @ jacobian.T, torch.ones(tasks)
    )
    direction = (jacobian.T @ weights).numpy()
    vectors = jacobian.numpy()
    g0 = vectors.mean(axis=0)
    # feasible: inside the ball around the mean gradient
    assert np.linalg.norm(direction - g0) <= c * np.linalg.norm(g0) * (1 + 1e-6)
    reference, best = _reference_primal(vectors, c)
    # optimal: its worst-task improvement matches the independent optimum
    assert (vectors @ direction).min() == pytest.approx(best, abs=1e-6)
    np.testing.assert_allclose(direction, reference, atol=1e-4)


def test_rescale_and_limits():
    jacobian = torch.randn(3, 5, generator=torch.Generator().manual_seed(5)).double()
    gramian, losses = jacobian @ jacobian.T, torch.ones(3)
    plain = CAGrad(3, c=0.5, rescale=0).weights_from_gramian(gramian, losses)
    torch.testing.assert_close(
        CAGrad(3, c=0.5, rescale=1).weights_from_gramian(gramian, losses), plain / 1.25
    )
    torch.testing.assert_close(
        CAGrad(3, c=0.5, rescale=2).weights_from_gramian(gramian, losses), plain / 1.5
    )
    mean = CAGrad(3, c=0.0).weights_from_gramian(gramian, losses)
    torch.testing.assert_close(mean, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert CAGrad(1).weights_from_gramian(torch.eye(1) * 3, torch.ones(1)).tolist() == [1.0]


def test_options_are_validated():
    for bad, accepted in (
        ({"c": 1.0}, r"a number in \[0, 1\)"),
        ({"c": -0.1}, r"a number in \[0, 1\)"),
        ({"c": "0.4"}, r"a number in \[0, 1\)"),
        ({"rescale": 3}, r"an integer in \[0, 2\]"),
        ({"rescale": True}, r"an integer in \[0, 2\]"),
    ):
        key = next(iter(bad))
        with pytest.raises(ValueError, match=rf"balance\.options\.{key} .*expected {accepted}"):
            CAGrad(2, **bad)
    assert CAGrad(2).describe()["c"] == 0.4 and CAGrad(2).describe()["rescale"] == 1
