"""The fused expert bank equals E separate MLPs computed one by one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from polytask.nn.experts import ExpertBank


def loop_reference(bank: ExpertBank, x: torch.Tensor) -> torch.Tensor:
    """Each expert as its own chain of nn.functional.linear / relu, in a Python loop."""
    outputs = []
    last = len(bank.weights) - 1
    for e in range(bank.num_experts):
        h = x if x.dim() == 2 else x[e]
        for index, (weight, bias) in enumerate(zip(bank.weights, bank.biases, strict=True)):
            h = F.linear(h, weight[e].T, bias[e, 0])
            if index < last or bank.activate_last:
                h = F.relu(h)
        outputs.append(h)
    return torch.stack(outputs)


@pytest.mark.parametrize("activate_last", [True, False])
@pytest.mark.parametrize("hidden", [[5], [6, 3], [4, 7, 2]])
def test_shared_input_matches_per_expert_loop(hidden, activate_last):
    torch.manual_seed(0)
    bank = ExpertBank(4, 9, hidden, activate_last=activate_last)
    x = torch.randn(11, 9)
    out = bank(x)
    assert out.shape == (4, 11, hidden[-1])
    torch.testing.assert_close(out, loop_reference(bank, x), rtol=1e-5, atol=1e-6)
    if not activate_last:
        assert (out < 0).any()


@pytest.mark.parametrize("hidden", [[5], [6, 3]])
def test_per_expert_input_matches_per_expert_loop(hidden):
    torch.manual_seed(1)
    bank = ExpertBank(3, 7, hidden)
    x = torch.randn(3, 10, 7)
    out = bank(x)
    assert out.shape == (3, 10, hidden[-1])
    torch.testing.assert_close(out, loop_reference(bank, x), rtol=1e-5, atol=1e-6)


def test_gradients_match_the_loop_reference():
    torch.manual_seed(2)
    bank = ExpertBank(3, 5, [4, 2])
    x = torch.randn(8, 5)
    target = torch.randn(3, 8, 2)
    ((bank(x) - target) ** 2).sum().backward()
    fused = [p.grad.clone() for p in bank.parameters()]
    bank.zero_grad()
    ((loop_reference(bank, x) - target) ** 2).sum().backward()
    for got, expected in zip(fused, [p.grad for p in bank.parameters()], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_experts_are_independent_and_differently_initialised():
    torch.manual_seed(3)
    bank = ExpertBank(2, 4, [3])
    x = torch.randn(5, 4)
    out = bank(x)
    assert not torch.allclose(out[0], out[1])
    out[0].sum().backward()
    assert torch.count_nonzero(bank.weights[0].grad[1]) == 0
    assert torch.count_nonzero(bank.biases[0].grad[1]) == 0


def test_initialisation_bounds_like_nn_linear():
    bank = ExpertBank(5, 16, [8, 4])
    for weight, bias in zip(bank.weights, bank.biases, strict=True):
        bound = 1.0 / math.sqrt(weight.shape[1])
        assert weight.abs().max() <= bound and bias.abs().max() <= bound
    assert bank.weights[0].shape == (5, 16, 8) and bank.weights[1].shape == (5, 8, 4)
    assert bank.biases[1].shape == (5, 1, 4)
    assert bank.out_dim == 4


def test_dropout_only_in_training():
    torch.manual_seed(4)
    bank = ExpertBank(2, 6, [32], dropout=0.5)
    x = torch.randn(16, 6)
    bank.eval()
    torch.testing.assert_close(bank(x), bank(x))
    bank.train()
    assert (bank(x) == 0).float().mean() > (bank.eval()(x) == 0).float().mean()


def test_selected_experts_are_copies_of_the_chosen_ones_in_that_order():
    torch.manual_seed(5)
    bank = ExpertBank(4, 6, [5, 3], dropout=0.1).eval()
    x = torch.randn(7, 6)
    kept = bank.select([3, 1]).eval()
    assert kept.num_experts == 2 and kept.hidden == [5, 3]
    torch.testing.assert_close(kept(x), bank(x)[[3, 1]])
    before = bank.weights[0].detach().clone()
    with torch.no_grad():
        kept.weights[0].zero_()
    assert torch.equal(bank.weights[0], before)  # copies, not views of the source
