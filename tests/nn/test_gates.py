"""Gate banks and expert mixing against plain references."""

from __future__ import annotations

import torch

from polytask.nn.experts import ExpertBank
from polytask.nn.gates import FixedGates, SoftmaxGates, StitchGates, mix_experts
from polytask.plan.schema import full


def test_gate_rows_sum_to_one_and_match_per_gate_softmax():
    torch.manual_seed(0)
    gates = SoftmaxGates([full(4)] * 3, num_experts=4, in_dim=6)
    x = torch.randn(9, 6)
    weights = gates(x)
    assert weights.shape == (3, 9, 4)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(3, 9))
    assert (weights > 0).all()
    assert gates.weight.shape == (3, 6, 4) and gates.bias.shape == (3, 1, 4)
    for g in range(3):
        expected = torch.softmax(x @ gates.weight[g] + gates.bias[g, 0], dim=-1)
        torch.testing.assert_close(weights[g], expected)


def test_gates_differ_per_task():
    torch.manual_seed(1)
    weights = SoftmaxGates([full(3)] * 2, 3, 5)(torch.randn(4, 5))
    assert not torch.allclose(weights[0], weights[1])


def test_gates_give_zero_weight_outside_their_allowed_experts():
    """A gate over some experts of the pool is the softmax over those experts alone."""
    torch.manual_seed(3)
    allowed = [[0, 2], [1, 2, 3], [3]]
    gates = SoftmaxGates(allowed, num_experts=4, in_dim=5)
    x = torch.randn(7, 5)
    weights = gates(x)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(3, 7))
    for g, members in enumerate(allowed):
        blocked = [e for e in range(4) if e not in members]
        assert (weights[g][:, blocked] == 0).all()
        logits = x @ gates.weight[g][:, members] + gates.bias[g, 0, members]
        torch.testing.assert_close(weights[g][:, members], torch.softmax(logits, dim=-1))


def test_gates_with_one_input_each_read_only_their_own():
    torch.manual_seed(4)
    gates = SoftmaxGates([full(3)] * 2, 3, 5, per_gate_input=True)
    x = torch.randn(2, 6, 5)
    weights = gates(x)
    for g in range(2):
        expected = torch.softmax(x[g] @ gates.weight[g] + gates.bias[g, 0], dim=-1)
        torch.testing.assert_close(weights[g], expected)


def test_selecting_gates_and_experts_keeps_their_weights_renormalised():
    torch.manual_seed(5)
    gates = SoftmaxGates([full(4)] * 3, 4, 5)
    x = torch.randn(6, 5)
    kept = gates.select([2, 0], [1, 3])
    logits = x @ gates.weight[2][:, [1, 3]] + gates.bias[2, 0, [1, 3]]
    torch.testing.assert_close(kept(x)[0], torch.softmax(logits, dim=-1))


def test_fixed_gates_are_row_independent_tables_over_their_allowed_experts():
    torch.manual_seed(6)
    gates = FixedGates([[0, 1], [1, 2]], 3)
    with torch.no_grad():
        gates.table.uniform_(0.5, 2.0)
    table = gates.weights()
    torch.testing.assert_close(table.sum(-1), torch.ones(2))
    assert table[0, 2] == 0 and table[1, 0] == 0
    bank, x = ExpertBank(3, 5, [2]), torch.randn(4, 5)
    mixed = gates.mix(x, x, bank)
    torch.testing.assert_close(mixed.out, torch.einsum("ge,ebd->gbd", table, bank(x)))
    assert mixed.weights is not None
    torch.testing.assert_close(mixed.weights, table.detach().unsqueeze(1).expand(-1, 4, -1))


def test_stitch_gates_start_near_identity_and_mix_linearly():
    gates = StitchGates([full(3)] * 3, 3, init_self=0.8)
    expected = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    torch.testing.assert_close(gates.alpha.detach(), expected)
    bank, x = ExpertBank(3, 5, [2]), torch.randn(4, 5)
    mixed = gates.mix(x, x, bank)
    experts = bank(x)
    for g in range(3):
        reference = sum(expected[g, e] * experts[e] for e in range(3))
        torch.testing.assert_close(mixed.out[g], reference)
    assert mixed.weights is None  # no per-row weights to report


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
