"""Equal weighting: the static-weighted sum of the losses of the tasks present in a batch."""

from __future__ import annotations

import pytest
import torch

from polytask.balance import BALANCERS, StepContext
from polytask.balance.equal import EqualWeighting
from polytask.config import parse_spec
from polytask.errors import ConfigError
from polytask.train.trainer import build_balancer
from tests.conftest import base_spec


def _setup():
    theta = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    losses = torch.stack([theta[0] ** 2, 3 * theta[1], theta[2] ** 3])
    return theta, losses


def test_gradient_is_that_of_the_weighted_sum():
    theta, losses = _setup()
    context = StepContext(
        present=torch.tensor([True, True, True]),
        static_weights=torch.tensor([1.0, 2.0, 0.5]),
        step=0,
    )
    weights = EqualWeighting(3).backward(losses, context)
    torch.testing.assert_close(weights, torch.tensor([1.0, 2.0, 0.5]))
    # d/dtheta of 1*t0^2 + 2*3*t1 + 0.5*t2^3
    torch.testing.assert_close(theta.grad, torch.tensor([2 * 0.5, 2 * 3.0, 0.5 * 3 * 2.0**2]))
    assert not weights.requires_grad


def test_absent_tasks_get_no_weight_and_no_gradient():
    theta, losses = _setup()
    context = StepContext(
        present=torch.tensor([True, False, True]), static_weights=torch.ones(3), step=5
    )
    weights = EqualWeighting(3).backward(losses, context)
    assert weights.tolist() == [1.0, 0.0, 1.0]
    assert theta.grad[1].item() == 0.0
    assert theta.grad[0].item() == pytest.approx(1.0)


def test_registry_and_options():
    assert BALANCERS.get("equal") is EqualWeighting
    assert "equal" in BALANCERS.names()
    with pytest.raises(ValueError, match=r"options\.temperature .*unknown key; allowed: none"):
        EqualWeighting(2, temperature=2.0)
    with pytest.raises(ConfigError, match=r"balance\.options\.alpha \(equal\): unknown"):
        parse_spec(base_spec("t.csv", balance={"method": "equal", "options": {"alpha": 1}}))
    spec = parse_spec(base_spec("t.csv"))
    spec.balance.options = {"alpha": 1}  # bypassing validation: the trainer still refuses it
    with pytest.raises(ConfigError, match=r"balance\.options\.alpha \(equal\): unknown"):
        build_balancer(spec, 4)


def test_state_is_empty_and_loads():
    balancer = EqualWeighting(2)
    assert balancer.state_dict() == {}
    balancer.load_state_dict({})
