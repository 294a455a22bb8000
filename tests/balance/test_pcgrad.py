"""PCGrad: the weights reproduce gradient surgery done on explicit vectors."""

from __future__ import annotations

import pytest
import torch

from polytask.balance import StepContext
from polytask.balance.pcgrad import PCGrad, pcgrad_coefficients, task_orders


def _explicit_pcgrad(jacobian: torch.Tensor, orders: list[torch.Tensor]) -> torch.Tensor:
    """Yu et al.'s loop on explicit gradient vectors [P, n]: the projected gradients [P, n]."""
    projected = []
    for i, order in enumerate(orders):
        g = jacobian[i].clone()
        for j in order.tolist():
            if j == i:
                continue
            inner = g @ jacobian[j]
            if inner < 0:
                g = g - inner / (jacobian[j] @ jacobian[j]) * jacobian[j]
                # right after a projection, g_i^PC no longer conflicts with g_j
                assert float(g @ jacobian[j]) == pytest.approx(0.0, abs=1e-12)
        projected.append(g)
    return torch.stack(projected)


def _update(balancer: PCGrad, jacobian: torch.Tensor, step: int) -> torch.Tensor:
    """The gradient the balancer leaves on theta for linear losses L_t = <g_t, theta>."""
    theta = torch.zeros(jacobian.shape[1], dtype=torch.float64, requires_grad=True)
    losses = jacobian @ theta
    present = torch.ones(jacobian.shape[0], dtype=torch.bool)
    context = StepContext(
        present=present,
        static_weights=torch.ones(jacobian.shape[0], dtype=torch.float64),
        step=step,
        shared_params=[theta],
    )
    balancer.backward(losses, context)
    assert theta.grad is not None
    return theta.grad


@pytest.mark.parametrize(("tasks", "step", "seed"), [(2, 0, 0), (4, 7, 3), (5, 11, 1)])
def test_update_equals_explicit_surgery(tasks, step, seed):
    jacobian = torch.randn(tasks, 6, generator=torch.Generator().manual_seed(step)).double()
    jacobian[1] = -0.8 * jacobian[0] + 0.3 * jacobian[1]  # a guaranteed conflict
    balancer = PCGrad(tasks, mode="exact", seed=seed)
    expected = _explicit_pcgrad(jacobian, task_orders(tasks, step, seed)).sum(dim=0)
    torch.testing.assert_close(_update(balancer, jacobian, step), expected)


def test_two_tasks_no_longer_conflict_with_the_other_original():
    jacobian = torch.tensor([[1.0, 0.5, 0.0], [-1.0, 1.0, 0.2]], dtype=torch.float64)
    gramian = jacobian @ jacobian.T
    projected = pcgrad_coefficients(gramian, task_orders(2, 0, 0)) @ jacobian
    assert float(projected[0] @ jacobian[1]) >= -1e-12
    assert float(projected[1] @ jacobian[0]) >= -1e-12
    torch.testing.assert_close(projected, _explicit_pcgrad(jacobian, task_orders(2, 0, 0)))


def test_non_conflicting_gradients_are_summed():
    jacobian = torch.rand(4, 5, generator=torch.Generator().manual_seed(0)).double() + 0.1
    weights = PCGrad(4).weights_from_gramian(jacobian @ jacobian.T, torch.ones(4))
    torch.testing.assert_close(weights, torch.ones(4, dtype=torch.float64))


def test_orders_are_deterministic_per_step_and_seed():
    same = zip(task_orders(5, 3, 1), task_orders(5, 3, 1), strict=True)
    assert all(torch.equal(a, b) for a, b in same)
    draws = {tuple(torch.cat(task_orders(5, step, 1)).tolist()) for step in range(5)}
    assert len(draws) > 1  # a new order at each step
    by_seed = {tuple(torch.cat(task_orders(5, 3, seed)).tolist()) for seed in range(5)}
    assert len(by_seed) > 1  # the seed matters (the generator reads only 32 bits of a seed)
    assert (
        task_orders(5, 3, 0)[0].tolist()
        == torch.randperm(5, generator=torch.Generator().manual_seed(3)).tolist()
    )  # seed 0: the orders of runs made before the seed was mixed in
    assert PCGrad(2, seed=4).describe()["seed"] == 4
    with pytest.raises(ValueError, match=r"options\.seed .*expected an integer >= 0, got -1"):
        PCGrad(2, seed=-1)
    with pytest.raises(ValueError, match=r"options\.seed .*expected an integer >= 0, got 1.5"):
        PCGrad(2, seed=1.5)
