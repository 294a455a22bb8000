"""Uncertainty weighting: sum_t exp(-s_t) L_t + s_t with learned log-variances s_t."""

from __future__ import annotations

import json
import math

import pytest
import torch

from polytask.balance import BALANCERS, StepContext
from polytask.balance.uncertainty import UncertaintyWeighting
from polytask.config import parse_spec
from polytask.errors import ConfigError
from polytask.train.trainer import build_balancer
from tests.balance.toy import assert_absent_task_is_ignored, resume_matches, toy_step
from tests.conftest import base_spec


def _context(present: list[bool], static: list[float] | None = None) -> StepContext:
    return StepContext(
        present=torch.tensor(present),
        static_weights=torch.tensor(static or [1.0] * len(present)),
        step=0,
    )


def test_log_variances_converge_to_the_closed_form_optimum():
    """For constant losses the objective is minimised at s_t = log L_t."""
    constant = torch.tensor([0.5, 2.0, 4.0])
    balancer = UncertaintyWeighting(3)
    optimizer = torch.optim.Adam(balancer.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad(set_to_none=True)
        balancer.backward(constant.clone().requires_grad_(), _context([True] * 3))
        optimizer.step()
    learned = torch.stack([s.detach() for s in balancer.parameters()])
    torch.testing.assert_close(learned, constant.log(), atol=2e-2, rtol=0)


def test_gradients_and_weights_follow_the_objective():
    balancer = UncertaintyWeighting(2, init=0.5)
    theta = torch.tensor([1.0, 2.0], requires_grad=True)
    losses = torch.stack([theta[0] ** 2, 3 * theta[1]])
    weights = balancer.backward(losses, _context([True, True], static=[1.0, 2.0]))
    factor = math.exp(-0.5)
    torch.testing.assert_close(weights, torch.tensor([factor, 2 * factor]))
    torch.testing.assert_close(theta.grad, torch.tensor([factor * 2.0, 2 * factor * 3.0]))
    s0, s1 = balancer.parameters()
    # d/ds w (exp(-s) L + s) = w (1 - exp(-s) L)
    assert s0.grad.item() == pytest.approx(1 - factor * 1.0)
    assert s1.grad.item() == pytest.approx(2 * (1 - factor * 6.0))


def test_absent_task_gets_no_weight_and_its_log_variance_no_gradient():
    balancer = UncertaintyWeighting(3)
    assert_absent_task_is_ignored(balancer)
    assert balancer.parameters()[1].grad is None  # the optimizer skips it entirely
    toy_step(balancer, [True, True, True])
    assert balancer.parameters()[1].grad is not None


def test_state_round_trip_copies_in_place():
    balancer = UncertaintyWeighting(2)
    with torch.no_grad():
        balancer.parameters()[0].fill_(0.3)
    other = UncertaintyWeighting(2)
    params = other.parameters()
    other.load_state_dict(balancer.state_dict())
    assert other.parameters()[0] is params[0]  # the optimizer's references stay valid
    torch.testing.assert_close(other.state_dict()["log_vars"], torch.tensor([0.3, 0.0]))
    with pytest.raises(ValueError, match="expected 2"):
        other.load_state_dict({"log_vars": torch.zeros(3)})


def test_registry_and_options():
    assert BALANCERS.get("uw") is UncertaintyWeighting
    with pytest.raises(ValueError, match=r"options\.init .*expected a finite number, got 'zero'"):
        UncertaintyWeighting(2, init="zero")
    with pytest.raises(ValueError, match=r"options\.temperature .*unknown key; allowed: init"):
        UncertaintyWeighting(2, temperature=1.0)
    with pytest.raises(ConfigError, match=r"balance\.options\.init \(uw\): expected"):
        spec = parse_spec(base_spec("t.csv", balance={"method": "uw", "options": {"init": [1]}}))
        build_balancer(spec, 4)


def test_training_optimises_and_checkpoints_the_log_variances(tmp_path, table_csv):
    resume_matches(tmp_path, table_csv, "uw")
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    learned = summary["balance"]["log_variances"]
    assert len(learned) == 4
    assert all(value != 0.0 for value in learned)  # the trainer's optimizer moved them
