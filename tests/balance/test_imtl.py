"""IMTL: equal projections on unit gradients (G), scaled losses driven to 1 (L), and both."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polytask.balance import Need, StepContext
from polytask.balance.imtl import IMTL, imtl_g_weights


def _jacobian(tasks: int, dim: int, seed: int) -> torch.Tensor:
    jacobian = torch.randn(tasks, dim, generator=torch.Generator().manual_seed(seed)).double()
    return jacobian * torch.linspace(0.5, 5.0, tasks, dtype=torch.float64).unsqueeze(1)


def _step(balancer: IMTL, jacobian: torch.Tensor, losses: torch.Tensor, step: int = 0):
    """Losses with gradient rows ``jacobian`` and values ``losses``; returns weights, grad."""
    theta = torch.zeros(jacobian.shape[1], dtype=torch.float64, requires_grad=True)
    tasks = jacobian.shape[0]
    context = StepContext(
        present=torch.ones(tasks, dtype=torch.bool),
        static_weights=torch.ones(tasks, dtype=torch.float64),
        step=step,
        shared_params=[theta],
    )
    weights = balancer.backward(jacobian @ theta + losses, context)
    return weights, theta.grad


@pytest.mark.parametrize(("tasks", "dim", "seed"), [(2, 4, 0), (3, 5, 1), (5, 8, 2)])
def test_imtl_g_projections_on_unit_gradients_are_equal(tasks, dim, seed):
    jacobian = _jacobian(tasks, dim, seed)
    weights = IMTL(tasks, variant="g").weights_from_gramian(jacobian @ jacobian.T, torch.ones(3))
    assert float(weights.sum()) == pytest.approx(1.0)
    direction = jacobian.T @ weights
    projections = (jacobian @ direction) / jacobian.norm(dim=1)
    torch.testing.assert_close(projections, projections[:1].expand(tasks))
    # the paper's closed form on explicit vectors, independently
    g = jacobian.numpy()
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    d_mat, u_mat = g[0] - g[1:], u[0] - u[1:]
    rest = g[0] @ u_mat.T @ np.linalg.inv(d_mat @ u_mat.T)
    np.testing.assert_allclose(weights.numpy(), np.append(1 - rest.sum(), rest), atol=1e-9)


def test_imtl_l_learns_scales_that_bring_every_scaled_loss_to_one():
    balancer = IMTL(2, variant="l", lr=0.5)
    assert balancer.needs == frozenset({Need.LOSSES})
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    losses = torch.tensor([4.0, 0.25], dtype=torch.float64)
    weights, grad = _step(balancer, jacobian, losses)
    torch.testing.assert_close(weights, torch.ones(2, dtype=torch.float64))  # e^0
    # one SGD step on e^s L - s from s = 0: s -= lr (L - 1)
    torch.testing.assert_close(balancer.log_scales, -0.5 * (losses - 1))
    torch.testing.assert_close(grad, jacobian.T @ weights)
    for step in range(1, 200):
        weights, _ = _step(balancer, jacobian, losses, step)
    torch.testing.assert_close(weights * losses, torch.ones(2, dtype=torch.float64))
    assert "mode" not in balancer.describe() and len(balancer.describe()["log_scales"]) == 2


def test_both_balances_scaled_gradients_and_saves_its_scales():
    jacobian = _jacobian(3, 5, 3)
    losses = torch.tensor([3.0, 1.0, 0.2], dtype=torch.float64)
    balancer = IMTL(3, variant="both", mode="exact", lr=0.1)
    _step(balancer, jacobian, losses)  # learn non-zero scales first
    scales = balancer.log_scales.exp()
    weights, grad = _step(balancer, jacobian, losses, 1)
    alpha = weights / scales  # IMTL-G weights of the scaled gradients e^s g
    assert float(alpha.sum()) == pytest.approx(1.0)
    projections = (jacobian @ grad) / jacobian.norm(dim=1)
    torch.testing.assert_close(projections, projections[:1].expand(3))
    fresh = IMTL(3)
    fresh.load_state_dict(balancer.state_dict())
    torch.testing.assert_close(fresh.log_scales, balancer.log_scales)
    with pytest.raises(ValueError, match="shape"):
        IMTL(2).load_state_dict({"log_scales": torch.zeros(3)})


def test_edge_cases_and_options():
    gramian = torch.diag(torch.tensor([1.0, 0.0, 4.0], dtype=torch.float64))
    weights = imtl_g_weights(gramian)
    assert weights[1].item() == 0.0 and bool(torch.isfinite(weights).all())
    same = torch.ones(2, 2, dtype=torch.float64)  # identical gradients: any split is impartial
    assert bool(torch.isfinite(imtl_g_weights(same)).all())
    assert imtl_g_weights(torch.eye(1)).tolist() == [1.0]
    for bad in ({"variant": "gl"}, {"lr": 0}, {"lr": "fast"}):
        with pytest.raises(ValueError, match=rf"balance\.options\.{next(iter(bad))} \(imtl\)"):
            IMTL(2, **bad)
