"""GradNorm: weights pull every task's gradient norm at the representation toward a common
target scaled by its relative inverse training rate; the weights sum to T."""

from __future__ import annotations

import math

import pytest
import torch

from polytask.balance import BALANCERS, StepContext
from polytask.balance.gradnorm import GradNorm, gradnorm_weight_gradient
from tests.balance.toy import assert_absent_task_is_ignored, resume_matches

A = torch.tensor([0.6, 0.8])  # ||A|| = 1
B = torch.tensor([0.0, 3.0])  # ||B|| = 3


def _call(balancer: GradNorm, values: list[float], present=None):
    """Losses L_t = values_t + <direction_t, r> at r = 0: gradients A and B at r."""
    representation = torch.zeros(2, requires_grad=True)
    losses = torch.stack([values[0] + A @ representation, values[1] + B @ representation])
    context = StepContext(
        torch.tensor(present or [True, True]), torch.ones(2), 0, representation=representation
    )
    weights = balancer.backward(losses, context)
    return weights, representation.grad


def test_weight_gradient_is_that_of_the_gradnorm_loss():
    weights = torch.tensor([1.2, 0.8, 1.0], requires_grad=True)
    norms = torch.tensor([1.0, 3.0, 0.5])
    relative = torch.tensor([0.9, 0.5, 0.7])
    g = weights * norms
    rates = relative / relative.mean()
    target = (g.mean() * rates**1.5).detach()  # the paper holds the target constant
    (expected,) = torch.autograd.grad((g - target).abs().sum(), weights)
    torch.testing.assert_close(
        gradnorm_weight_gradient(weights.detach(), norms, relative, 1.5), expected
    )


def test_a_slow_task_gains_weight_and_the_network_uses_the_old_weights():
    balancer = GradNorm(2, alpha=1.5, lr=0.025)
    equal_norms = torch.tensor([1.0, 1.0])
    balancer.initial_losses = torch.tensor([1.0, 1.0])
    # task 0's loss is at 2x its start, task 1's at 0.5x: r = (1.6, 0.4)
    rates = torch.tensor([2.0, 0.5]) / 1.25
    target = 1.0 * rates**1.5
    assert target[0] > 1 > target[1]  # G = (1, 1): task 0 below target, task 1 above
    gradient = gradnorm_weight_gradient(torch.ones(2), equal_norms, torch.tensor([2.0, 0.5]), 1.5)
    assert gradient.tolist() == [-1.0, 1.0]
    weights, grad = _call(balancer, [2.0, 0.5])
    assert weights.tolist() == [1.0, 1.0]  # this step's network gradient: weights before
    torch.testing.assert_close(grad, A + B)
    # first Adam step moves each weight by lr in the descent direction; the sum stays 2
    torch.testing.assert_close(balancer.weights, torch.tensor([1.025, 0.975]))


def test_weights_converge_to_equal_gradient_norms_at_equal_rates():
    """Equal relative losses: the target is the mean norm, so w_0 ||A|| = w_1 ||B||."""
    balancer = GradNorm(2, lr=0.01)
    for _ in range(300):
        _call(balancer, [1.0, 2.0])
        assert balancer.weights.sum().item() == pytest.approx(2.0)
    torch.testing.assert_close(balancer.weights, torch.tensor([1.5, 0.5]), atol=0.05, rtol=0)


def test_weights_sum_to_t_on_the_toy_model():
    from tests.balance.toy import Toy, toy_step

    balancer = GradNorm(3, lr=0.1)
    model = Toy(3)
    for step in range(10):
        toy_step(balancer, [True] * 3, model=model, step=step)
        assert balancer.weights.sum().item() == pytest.approx(3.0)
    assert not torch.allclose(balancer.weights, torch.ones(3))


def test_absent_task_is_ignored_and_its_state_frozen():
    assert_absent_task_is_ignored(GradNorm(3))
    balancer = GradNorm(2)
    weights, _ = _call(balancer, [1.0, 2.0], present=[True, False])
    assert weights.tolist() == [1.0, 0.0]
    assert math.isnan(balancer.initial_losses[1].item())
    assert balancer.weights.tolist() == [1.0, 1.0]  # one task: nothing to balance
    _call(balancer, [1.0, 2.0])
    frozen = balancer.weights[0].item()
    _call(balancer, [1.5, 2.0], present=[False, True])
    assert balancer.weights[0].item() == frozen
    assert balancer.adam["steps"].tolist() == [2, 2]  # calls in which each task was present


def test_state_round_trip():
    balancer = GradNorm(2)
    for values in ([1.0, 2.0], [1.5, 1.0], [1.2, 0.8]):
        _call(balancer, values)
    other = GradNorm(2)
    other.load_state_dict(balancer.state_dict())
    torch.testing.assert_close(_call(other, [1.0, 1.0]), _call(balancer, [1.0, 1.0]))
    torch.testing.assert_close(other.weights, balancer.weights)


def test_registry_and_options():
    assert BALANCERS.get("gradnorm") is GradNorm
    assert GradNorm(2).options.alpha == 1.5
    with pytest.raises(ValueError, match=r"options\.alpha .*expected a number >= 0, got -1"):
        GradNorm(2, alpha=-1)
    with pytest.raises(ValueError, match=r"options\.lr .*expected a number > 0, got 0.0"):
        GradNorm(2, lr=0.0)


def test_training_run_and_resume(tmp_path, table_csv):
    resume_matches(tmp_path, table_csv, "gradnorm", alpha=1.0)
