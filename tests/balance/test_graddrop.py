"""GradDrop: per-element sign dropout of the task gradients at the shared representation; the
encoder gets the masked gradient, the parts above the representation the plain sum."""

from __future__ import annotations

import pytest
import torch

from polytask.balance import BALANCERS
from polytask.balance.graddrop import (
    GradDrop,
    drop_masks,
    graddrop_gradient,
    purity,
    sign_statistics,
)
from tests.balance.toy import Toy, assert_absent_task_is_ignored, resume_matches, toy_step


def test_masks_follow_the_purity_rule_for_a_fixed_noise_draw():
    stats = torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, -0.5]])
    # P = 1/2 (1 + sum / sum|.|): column 0 all positive, column 1 (-1 / 3), column 2 (0 / 1)
    torch.testing.assert_close(purity(stats), torch.tensor([1.0, 1 / 3, 0.5]))
    noise = torch.tensor([0.9, 0.5, 0.4])
    # P > U keeps the positive entries, P < U the negative ones
    expected = torch.tensor([[True, True, True], [True, False, False]])
    assert torch.equal(drop_masks(stats, noise), expected)
    assert torch.equal(drop_masks(stats, torch.tensor([0.99, 0.2, 0.6]))[:, 1:], ~expected[:, 1:])


def test_batch_separated_statistics_use_the_sign_of_the_activation():
    grads = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]])  # one task, batch of 2, width 2
    activation = torch.tensor([[1.0, -1.0], [-2.0, 0.5]])
    # G = sum_batch sign(A) g: column 0 = 1 - 3, column 1 = -2 - 1
    torch.testing.assert_close(sign_statistics(grads, activation, 0), torch.tensor([[-2.0, -3.0]]))


def test_equal_signs_give_the_plain_sum():
    grads = torch.rand(3, 4, 5) + 0.1  # 3 tasks, batch 4, width 5, all positive
    activation = torch.rand(4, 5) + 0.1
    noise = torch.rand(5)
    torch.testing.assert_close(graddrop_gradient(grads, activation, noise), grads.sum(0))
    torch.testing.assert_close(graddrop_gradient(-grads, activation, noise), -grads.sum(0))
    # a full leak turns GradDrop off whatever the signs
    mixed = torch.randn(3, 4, 5)
    torch.testing.assert_close(graddrop_gradient(mixed, activation, noise, leak=1.0), mixed.sum(0))


def _expected(model: Toy, seed: int, extra_scale: float = 0.0):
    """Encoder and tower gradients from the definition, on a fresh forward pass."""
    losses = model.losses()
    rep = model.representation
    grads = torch.stack(
        [torch.autograd.grad(losses[t], rep, retain_graph=True)[0] for t in range(3)]
    )
    noise = torch.rand(rep.shape[1], generator=torch.Generator().manual_seed(seed))
    masks = drop_masks(grads.sum(dim=1), noise)  # rep > 0 here, so sign(A) = 1
    new = (masks.unsqueeze(1) * grads).sum(0)
    assert not torch.allclose(new, grads.sum(0))  # something was dropped
    new = new + 2 * extra_scale * rep.detach()
    encoder = torch.autograd.grad(rep, list(model.encoder.parameters()), new, retain_graph=True)
    towers = torch.autograd.grad(losses.sum(), [t.weight for t in model.towers])
    return encoder, towers


def test_encoder_gets_the_masked_gradient_and_towers_the_plain_sum():
    model = Toy(3, seed=2)
    encoder, towers = _expected(model, seed=5)
    toy_step(GradDrop(3, seed=5), [True] * 3, model=model)
    for param, expected in zip(model.encoder.parameters(), encoder, strict=True):
        torch.testing.assert_close(param.grad, expected)
    for tower, expected in zip(model.towers, towers, strict=True):
        torch.testing.assert_close(tower.weight.grad, expected)


def test_auxiliary_loss_gradient_is_never_dropped():
    from polytask.balance import StepContext

    model = Toy(3, seed=2)
    encoder, _ = _expected(model, seed=5, extra_scale=0.01)
    losses = model.losses()
    context = StepContext(
        torch.tensor([True] * 3),
        torch.ones(3),
        0,
        representation=model.representation,
        extra_loss=0.01 * (model.representation**2).sum(),
    )
    GradDrop(3, seed=5).backward(losses, context)
    for param, expected in zip(model.encoder.parameters(), encoder, strict=True):
        torch.testing.assert_close(param.grad, expected)


def test_absent_task_is_ignored():
    assert_absent_task_is_ignored(GradDrop(3))


def test_state_round_trip_continues_the_noise():
    balancer = GradDrop(3, seed=1)
    toy_step(balancer, [True] * 3)
    other = GradDrop(3, seed=8)
    other.load_state_dict(balancer.state_dict())
    first = toy_step(balancer, [True] * 3).model
    second = toy_step(other, [True] * 3).model
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_registry_and_options():
    assert BALANCERS.get("graddrop") is GradDrop
    with pytest.raises(ValueError, match=r"options\.leak .*expected a number in \[0, 1\]"):
        GradDrop(2, leak=1.5)
    with pytest.raises(ValueError, match=r"options\.seed .*expected an integer >= 0, got -3"):
        GradDrop(2, seed=-3)


def test_training_run_and_resume(tmp_path, table_csv):
    resume_matches(tmp_path, table_csv, "graddrop", seed=3)
