"""Dynamic Weight Average: w_t = T softmax(r_t / temperature), r_t = L_t(e-1) / L_t(e-2)."""

from __future__ import annotations

import math

import pytest
import torch

from polytask.balance import BALANCERS, StepContext
from polytask.balance.dwa import DynamicWeightAverage
from tests.balance.toy import assert_absent_task_is_ignored, resume_matches


def _feed(balancer: DynamicWeightAverage, epoch_losses: list[list[float]]) -> torch.Tensor:
    """Run one call per listed loss vector, closing an epoch after each; the next weights."""
    for values in epoch_losses:
        _call(balancer, values, [True] * len(values))
        balancer.end_epoch()
    return _call(balancer, [1.0] * balancer.num_tasks, [True] * balancer.num_tasks)


def _call(balancer, values, present, static=None) -> torch.Tensor:
    losses = torch.tensor(values, requires_grad=True)
    context = StepContext(
        present=torch.tensor(present),
        static_weights=torch.tensor(static or [1.0] * len(values)),
        step=0,
    )
    return balancer.backward(losses, context)


def test_weights_are_one_until_two_epochs_are_known():
    balancer = DynamicWeightAverage(3)
    assert _call(balancer, [1.0, 2.0, 3.0], [True] * 3).tolist() == [1.0, 1.0, 1.0]
    balancer.end_epoch()
    assert _call(balancer, [1.0, 2.0, 3.0], [True] * 3).tolist() == [1.0, 1.0, 1.0]


def test_weights_equal_the_formula_on_hand_given_epoch_losses():
    balancer = DynamicWeightAverage(3, temperature=2.0)
    # epoch means: e1 = (2, 4, 1), e2 = (1, 4, 2) (two steps each, averaged)
    for values in ([3.0, 5.0, 1.0], [1.0, 3.0, 1.0]):
        _call(balancer, values, [True] * 3)
    balancer.end_epoch()
    for values in ([1.5, 4.0, 2.5], [0.5, 4.0, 1.5]):
        _call(balancer, values, [True] * 3)
    balancer.end_epoch()
    weights = _call(balancer, [1.0, 1.0, 1.0], [True] * 3)
    ratios = [1 / 2, 4 / 4, 2 / 1]
    exps = [math.exp(r / 2.0) for r in ratios]
    expected = [3 * e / sum(exps) for e in exps]
    torch.testing.assert_close(weights, torch.tensor(expected))
    assert weights.sum().item() == pytest.approx(3.0)
    # the objective's gradient is the weighted sum: d/dL_t = w_t
    losses = torch.ones(3, requires_grad=True)
    context = StepContext(torch.tensor([True] * 3), torch.ones(3), 0)
    balancer.backward(losses, context)
    torch.testing.assert_close(losses.grad, torch.tensor(expected))


def test_temperature_and_static_weights():
    hot = _feed(DynamicWeightAverage(2, temperature=100.0), [[1.0, 1.0], [0.5, 2.0]])
    cold = _feed(DynamicWeightAverage(2, temperature=0.1), [[1.0, 1.0], [0.5, 2.0]])
    assert abs(hot[0] - hot[1]) < 0.05  # high temperature: nearly equal
    assert cold[1] > 1.99  # low temperature: the slow task takes nearly everything
    balancer = DynamicWeightAverage(2)
    weights = _call(balancer, [1.0, 1.0], [True, True], static=[2.0, 0.5])
    assert weights.tolist() == [2.0, 0.5]


def test_absent_task_is_ignored_and_keeps_its_history():
    balancer = DynamicWeightAverage(3)
    assert_absent_task_is_ignored(balancer)
    assert balancer.loss_count.tolist() == [3.0, 0.0, 3.0]
    balancer.end_epoch()
    assert math.isnan(balancer.last[1].item())  # never seen: still unknown
    # with history, an absent task's share goes to the present ones: they sum to P
    balancer = DynamicWeightAverage(3)
    _feed(balancer, [[1.0, 1.0, 1.0], [2.0, 1.0, 0.5]])
    weights = _call(balancer, [1.0, 1.0, 1.0], [True, False, True])
    assert weights[1].item() == 0.0
    assert weights.sum().item() == pytest.approx(2.0)
    assert weights[0] > weights[2]


def test_state_round_trip():
    balancer = DynamicWeightAverage(2)
    _feed(balancer, [[1.0, 2.0], [3.0, 1.0]])
    _call(balancer, [5.0, 5.0], [True, False])
    other = DynamicWeightAverage(2)
    other.load_state_dict(balancer.state_dict())
    for key, value in balancer.state_dict().items():
        torch.testing.assert_close(other.state_dict()[key], value, equal_nan=True)
    other.end_epoch()
    balancer.end_epoch()
    torch.testing.assert_close(
        _call(other, [1.0, 1.0], [True] * 2), _call(balancer, [1.0, 1.0], [True] * 2)
    )


def test_registry_and_options():
    assert BALANCERS.get("dwa") is DynamicWeightAverage
    for bad in (0, -1.0, "2", float("inf"), True):
        with pytest.raises(ValueError, match=r"options\.temperature .*expected a number > 0"):
            DynamicWeightAverage(2, temperature=bad)


def test_training_run_and_resume(tmp_path, table_csv):
    resume_matches(tmp_path, table_csv, "dwa", epochs=3, temperature=0.5)
