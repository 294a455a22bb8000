"""FAMO: weights z = softmax(xi) on log-losses, xi moved by the observed log-loss decrease."""

from __future__ import annotations

import math

import pytest
import torch

from polytask.balance import BALANCERS, StepContext
from polytask.balance.famo import FAMO, masked_adam_step, new_adam_state, softmax_vjp
from tests.balance.toy import assert_absent_task_is_ignored, resume_matches

LR = 0.025


def _call(balancer: FAMO, values: list[float], present=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and the gradient on the raw losses of one call."""
    losses = torch.tensor(values, requires_grad=True)
    present = present or [True] * len(values)
    context = StepContext(torch.tensor(present), torch.ones(len(values)), 0)
    weights = balancer.backward(losses, context)
    return weights, losses.grad


def test_hand_computed_two_task_step():
    balancer = FAMO(2, lr=LR, weight_decay=1e-3)
    # call 1: xi = 0, z = (1/2, 1/2); c_t = z_t / sum_s(z_s / L_s) = 0.5 / (0.25 + 1) = 0.4;
    # the gradient of sum_t c_t log L_t on L_t is c_t / L_t
    weights, grad = _call(balancer, [2.0, 0.5])
    torch.testing.assert_close(grad, torch.tensor([0.4 / 2.0, 0.4 / 0.5]))
    torch.testing.assert_close(weights, grad)
    assert balancer.logits.tolist() == [0.0, 0.0]  # nothing to compare with yet

    # call 2: decrease of log-losses delta = log L_before - log L_after
    after = [1.0, 0.45]
    delta = torch.tensor([math.log(2.0 / 1.0), math.log(0.5 / 0.45)])
    # softmax Jacobian at z = 1/2: J^T delta = z * (delta - <z, delta>)
    d = 0.5 * (delta - delta.mean())
    # first Adam step from xi = 0 (the L2 term gamma * xi is 0): m_hat = d, v_hat = d^2
    xi = -LR * d / (d.abs() + 1e-8)
    _, grad = _call(balancer, after)
    torch.testing.assert_close(balancer.logits, xi)
    assert balancer.logits[0] < balancer.logits[1]  # task 0 improved more: less weight
    z = torch.softmax(xi, dim=0)
    c = z / (z / torch.tensor(after)).sum()
    torch.testing.assert_close(grad, c / torch.tensor(after))


def test_softmax_vjp_is_the_jacobian_transpose_product():
    logits = torch.tensor([0.3, -0.2, 1.0], requires_grad=True)
    vector = torch.tensor([0.5, -1.0, 2.0])
    (expected,) = torch.autograd.grad(torch.softmax(logits, 0), logits, grad_outputs=vector)
    torch.testing.assert_close(softmax_vjp(logits.detach(), vector), expected)


def test_masked_adam_matches_torch_adam_and_leaves_masked_entries_alone():
    param = torch.tensor([0.5, -1.0, 2.0])
    reference = torch.nn.Parameter(param.clone())
    optimizer = torch.optim.Adam([reference], lr=0.1, weight_decay=0.01)
    state = new_adam_state(3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        grad = torch.randn(3, generator=generator)
        reference.grad = grad.clone()
        optimizer.step()
        masked_adam_step(param, grad, state, torch.ones(3, dtype=torch.bool), 0.1, 0.01)
    torch.testing.assert_close(param, reference.detach())
    before = {key: value.clone() for key, value in state.items()}
    frozen = param.clone()
    masked_adam_step(param, torch.ones(3), state, torch.tensor([True, False, True]), 0.1, 0.01)
    assert param[1] == frozen[1] and param[0] != frozen[0]
    for key in state:
        assert state[key][1] == before[key][1]


def test_absent_task_is_ignored_and_its_logit_frozen():
    assert_absent_task_is_ignored(FAMO(3))
    balancer = FAMO(3)
    _call(balancer, [1.0, 1.0, 1.0])
    _call(balancer, [0.5, 0.9, 0.8], present=[True, False, True])
    assert balancer.logits[1].item() == 0.0
    assert balancer.adam["steps"].tolist() == [1, 0, 1]
    assert math.isnan(balancer.prev_log_losses[1].item())
    _call(balancer, [0.4, 0.9, 0.7])  # task 1 has no 'before' loss: still no update
    assert balancer.adam["steps"].tolist() == [2, 0, 2]


def test_state_round_trip():
    balancer = FAMO(2)
    for values in ([1.0, 2.0], [0.8, 1.9], [0.7, 1.5]):
        _call(balancer, values)
    other = FAMO(2)
    other.load_state_dict(balancer.state_dict())
    torch.testing.assert_close(_call(other, [0.6, 1.4]), _call(balancer, [0.6, 1.4]))
    torch.testing.assert_close(other.logits, balancer.logits)


def test_registry_and_options():
    assert BALANCERS.get("famo") is FAMO
    with pytest.raises(ValueError, match=r"options\.lr .*expected a number > 0, got 0"):
        FAMO(2, lr=0)
    with pytest.raises(ValueError, match=r"options\.weight_decay .*expected a number >= 0"):
        FAMO(2, weight_decay=-1e-3)
    with pytest.raises(ValueError, match=r"options\.lr .*expected a number > 0, got 'fast'"):
        FAMO(2, lr="fast")
    FAMO(2, weight_decay=0)


def test_training_run_and_resume(tmp_path, table_csv):
    resume_matches(tmp_path, table_csv, "famo", lr=0.05)
