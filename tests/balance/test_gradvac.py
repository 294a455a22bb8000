"""GradVac: pairwise cosines are raised to their EMA targets; the targets are saved state."""

from __future__ import annotations

import math

import pytest
import torch

from polytask.balance import StepContext
from polytask.balance.gradvac import GradVac, gradvac_coefficients
from polytask.balance.pcgrad import pcgrad_coefficients, task_orders


def _step(balancer: GradVac, jacobian: torch.Tensor, step: int, present=None) -> torch.Tensor:
    theta = torch.zeros(jacobian.shape[1], dtype=torch.float64, requires_grad=True)
    tasks = jacobian.shape[0]
    context = StepContext(
        present=torch.tensor(present or [True] * tasks),
        static_weights=torch.ones(tasks, dtype=torch.float64),
        step=step,
        shared_params=[theta],
    )
    return balancer.backward(jacobian @ theta, context)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


JACOBIAN = torch.tensor(
    [[1.0, 0.2, 0.0, 0.3], [-0.5, 1.0, 0.1, 0.0], [0.3, -0.8, 1.0, 0.2]], dtype=torch.float64
)


def test_conflicting_pair_is_moved_to_the_target_cosine():
    jacobian = JACOBIAN[:2]
    targets = torch.full((2, 2), 0.5, dtype=torch.float64)
    coefficients, _ = gradvac_coefficients(jacobian @ jacobian.T, task_orders(2, 0, 0), targets, 0)
    adjusted = coefficients @ jacobian
    assert _cos(jacobian[0], jacobian[1]) < 0.5
    assert _cos(adjusted[0], jacobian[1]) == pytest.approx(0.5, abs=1e-12)
    assert _cos(adjusted[1], jacobian[0]) == pytest.approx(0.5, abs=1e-12)


def test_target_zero_is_pcgrad_and_ema_follows_observed_cosines():
    gramian = JACOBIAN @ JACOBIAN.T
    orders = task_orders(3, 5, 0)
    zero = torch.zeros(3, 3, dtype=torch.float64)
    vaccinated, targets = gradvac_coefficients(gramian, orders, zero, beta=0.0)
    torch.testing.assert_close(vaccinated, pcgrad_coefficients(gramian, orders))
    assert bool((targets == 0).all())
    _, targets = gradvac_coefficients(gramian, [torch.tensor([0, 1])] * 2, zero[:2, :2], 0.25)
    # task 0 meets task 1 first, unmodified: phi_hat = (1 - beta) 0 + beta cos(g0, g1)
    assert float(targets[0, 1]) == pytest.approx(0.25 * _cos(JACOBIAN[0], JACOBIAN[1]))


def test_state_round_trips_and_resumes_identically():
    first = GradVac(3, beta=0.3, mode="exact", seed=2)
    for step in range(3):
        _step(first, JACOBIAN * (1 + step), step)
    state = first.state_dict()
    assert state["targets"].shape == (3, 3) and bool((state["targets"] != 0).any())
    second = GradVac(3, beta=0.3, mode="exact", seed=2)
    second.load_state_dict(state)
    torch.testing.assert_close(second.targets, first.targets)
    torch.testing.assert_close(_step(second, JACOBIAN, 3), _step(first, JACOBIAN, 3))
    torch.testing.assert_close(second.state_dict()["targets"], first.state_dict()["targets"])
    with pytest.raises(ValueError, match="shape"):
        GradVac(2).load_state_dict({"targets": torch.zeros(3, 3)})


def test_absent_task_keeps_its_targets():
    balancer = GradVac(3, beta=0.5, mode="exact")
    weights = _step(balancer, JACOBIAN, 0, present=[True, False, True])
    assert weights[1].item() == 0.0
    assert bool((balancer.targets[1] == 0).all()) and bool((balancer.targets[:, 1] == 0).all())
    assert float(balancer.targets[0, 2]) == pytest.approx(0.5 * _cos(JACOBIAN[0], JACOBIAN[2]))


def test_options_are_validated():
    with pytest.raises(ValueError, match=r"options\.beta .*a number in \[0, 1\], got 1.5"):
        GradVac(2, beta=1.5)
    with pytest.raises(ValueError, match=r"options\.beta .*a number in \[0, 1\], got '0.1'"):
        GradVac(2, beta="0.1")
    assert GradVac(2).describe()["beta"] == 0.01
    assert math.isfinite(float(GradVac(1).weights_from_gramian(torch.eye(1), torch.ones(1))))
