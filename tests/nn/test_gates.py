"""Softmax gates and expert mixing against plain references."""

from __future__ import annotations

import torch

from polytask.nn.gates import SoftmaxGates, mix_experts


def test_gate_rows_sum_to_one_and_match_per_gate_softmax():
    torch.manual_seed(0)
    gates = SoftmaxGates(num_gates=3, in_dim=6, num_experts=4)
    x = torch.randn(9, 6)
    weights = gates(x)
    assert weights.shape == (3, 9, 4)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(3, 9))
    assert (weights > 0).all()
    weight, bias = gates.linear.weight, gates.linear.bias
    for g in range(3):
        rows = slice(g * 4, (g + 1) * 4)
        expected = torch.softmax(x @ weight[rows].T + bias[rows], dim=-1)
        torch.testing.assert_close(weights[g], expected)


def test_gates_differ_per_task():
    torch.manual_seed(1)
    weights = SoftmaxGates(2, 5, 3)(torch.randn(4, 5))
    assert not torch.allclose(weights[0], weights[1])


def test_mix_experts_equals_einsum():
    torch.manual_seed(2)
    gates = torch.softmax(torch.randn(3, 7, 5), dim=-1)
    experts = torch.randn(5, 7, 4)
    mixed = mix_experts(gates, experts)
    assert mixed.shape == (3, 7, 4)
    torch.testing.assert_close(mixed, torch.einsum("gbe,ebd->gbd", gates, experts))


def test_mix_with_one_hot_gate_selects_an_expert():
    experts = torch.randn(3, 2, 4)
    gates = torch.zeros(1, 2, 3)
    gates[0, 0, 2] = 1.0
    gates[0, 1, 0] = 1.0
    mixed = mix_experts(gates, experts)
    torch.testing.assert_close(mixed[0, 0], experts[2, 0])
    torch.testing.assert_close(mixed[0, 1], experts[0, 1])
