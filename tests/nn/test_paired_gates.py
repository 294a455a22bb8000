"""Paired softmax gates compute what the dense layout computes, from the same parameters."""

from __future__ import annotations

import pytest
import torch

from polytask.nn.experts import ExpertBank
from polytask.nn.gates import SoftmaxGates
from polytask.nn.paired_gates import PairedSoftmaxGates, load_dense, softmax_gates


def cgc_allowed(tasks: int, shared: int) -> list[list[int]]:
    """CGC's gates: task t over its own expert (shared + t) and the shared ones; PLE's
    shared gate over all."""
    own = [[*range(shared), shared + t] for t in range(tasks)]
    return [*own, list(range(shared + tasks))]


@pytest.mark.parametrize("per_gate_input", [False, True])
def test_paired_gates_equal_the_dense_layout(per_gate_input):
    torch.manual_seed(0)
    allowed = cgc_allowed(tasks=12, shared=3)
    experts, in_dim = 15, 6
    dense = SoftmaxGates(allowed, experts, in_dim, per_gate_input)
    paired = PairedSoftmaxGates(allowed, experts, in_dim, per_gate_input)
    paired.load_state_dict(dense.state_dict())  # the dense state converts on load
    x = torch.randn(len(allowed), 9, in_dim) if per_gate_input else torch.randn(9, in_dim)
    bank = ExpertBank(experts, in_dim, [4])
    expert_input = torch.randn(9, in_dim)
    for mode in (True, False):
        dense.train(mode), paired.train(mode)
        a, b = dense.mix(x, expert_input, bank), paired.mix(x, expert_input, bank)
        torch.testing.assert_close(b.out, a.out)
    assert b.weights is not None and a.weights is not None
    torch.testing.assert_close(b.weights, a.weights)  # eval: the dense report
    paired.train()
    assert paired.mix(x, expert_input, bank).weights is None  # not built in training
    pairs = sum(len(m) for m in allowed)
    assert paired.weight.shape == (in_dim, pairs)


def test_gradients_match_the_dense_layout():
    torch.manual_seed(1)
    allowed = cgc_allowed(tasks=5, shared=2)
    dense = SoftmaxGates(allowed, 7, 4)
    paired = PairedSoftmaxGates(allowed, 7, 4)
    paired.load_state_dict(dense.state_dict())
    bank = ExpertBank(7, 4, [3])
    x = torch.randn(8, 4)
    dense.mix(x, x, bank).out.square().sum().backward()
    paired.mix(x, x, bank).out.square().sum().backward()
    weight, bias = dense.weight.grad, dense.bias.grad
    assert weight is not None and bias is not None and paired.weight.grad is not None
    torch.testing.assert_close(paired.weight.grad, weight[paired.gate_of, :, paired.expert_of].t())
    torch.testing.assert_close(paired.bias.grad, bias[paired.gate_of, 0, paired.expert_of])


def test_the_layout_is_chosen_by_how_few_pairs_are_allowed():
    assert isinstance(softmax_gates(cgc_allowed(40, 4), 44, 5, False), PairedSoftmaxGates)
    assert isinstance(softmax_gates([list(range(8))] * 3, 8, 5, False), SoftmaxGates)


def test_select_and_lean_keep_the_function():
    torch.manual_seed(2)
    allowed = cgc_allowed(tasks=10, shared=2)
    paired = PairedSoftmaxGates(allowed, 12, 5)
    dense = SoftmaxGates(allowed, 12, 5)
    load_dense(dense, *paired.dense_parameters())
    x = torch.randn(6, 5)
    full_weights = paired.dense(paired(x))
    torch.testing.assert_close(full_weights, dense(x))
    kept = paired.select([3, 4], [0, 1, 5, 6])
    torch.testing.assert_close(
        kept(x) if isinstance(kept, SoftmaxGates) else kept.dense(kept(x)),
        dense.select([3, 4], [0, 1, 5, 6])(x),
    )
    mixture = paired.lean(3)
    assert mixture.experts == allowed[3]
    assert mixture.logit_weight is not None and mixture.logit_bias is not None
    logits = x @ mixture.logit_weight + mixture.logit_bias
    torch.testing.assert_close(torch.softmax(logits, -1), full_weights[3][:, allowed[3]])


def test_a_many_task_ple_uses_paired_gates_and_cuts_and_folds_exactly():
    from polytask.config import ModelSpec
    from polytask.inference.lean import lean_form
    from polytask.inference.subset import task_subset
    from polytask.model import build_model
    from tests.slim.test_extract import assert_same_outputs, make_rows

    torch.manual_seed(3)
    names = [f"t{i}" for i in range(12)]
    spec = ModelSpec(
        arch="ple",
        embedding_dim=2,
        hidden=[5],
        tower_hidden=[3],
        options={"levels": 2, "task_experts": 1, "shared_experts": 2},
    )
    model = build_model(spec, [4, 3], 4, [1] * 12, names).eval()
    kinds = [type(level.gates) for level in model.arch.level_modules]
    # the first level's shared gate reads all 14 experts: 50 of 182 pairs, dense; the last
    # level's 12 task gates read 3 each: paired
    assert kinds == [SoftmaxGates, PairedSoftmaxGates]
    assert_same_outputs(model, task_subset(model, [2, 7]), [2, 7], atol=1e-5)
    lean = lean_form(model)
    if lean is not None:
        rows = make_rows(20)
        with torch.inference_mode():
            for got, expected in zip(lean(rows).logits, model(rows).logits, strict=True):
                torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_cgc_gates_form_one_group_of_own_experts_and_a_shared_block():
    from polytask.nn.paired_gates import gate_groups

    groups = gate_groups(cgc_allowed(tasks=6, shared=2))
    task_group, shared_gate = groups
    assert task_group.gates == list(range(6))
    assert task_group.common == [0, 1]
    assert task_group.own == [[2 + t] for t in range(6)]
    # the one gate over every expert reads them all as one block
    assert shared_gate.gates == [6] and shared_gate.own == [[]]
    assert shared_gate.common == list(range(8))
    pairs = [p for group in groups for row in group.pairs for p in row]
    assert sorted(pairs) == list(range(sum(len(m) for m in cgc_allowed(6, 2))))


def test_split_points_cut_at_every_run_and_refuse_overlaps():
    from polytask.nn.paired_gates import split_points

    assert split_points([(0, 2), (2, 6)], 8) == [2, 6]
    assert split_points([(2, 3)], 8) == [2, 3, 3]
    assert split_points([(0, 4), (2, 3)], 8) is None


@pytest.mark.parametrize("per_gate_input", [False, True])
def test_scattered_and_several_own_experts_equal_the_dense_layout(per_gate_input):
    """Own experts out of order, two per gate, shared ones interleaved: the gathered paths."""
    torch.manual_seed(4)
    order = torch.randperm(22).tolist()
    shared = order[:2]
    allowed = [[order[2 + 2 * t], *shared, order[3 + 2 * t]] for t in range(10)]
    allowed.append(order[::2])  # a gate of its own over half the pool
    dense = SoftmaxGates(allowed, 22, 5, per_gate_input)
    paired = PairedSoftmaxGates(allowed, 22, 5, per_gate_input)
    paired.load_state_dict(dense.state_dict())
    x = torch.randn(len(allowed), 7, 5) if per_gate_input else torch.randn(7, 5)
    bank = ExpertBank(22, 5, [3])
    expert_input = torch.randn(7, 5)
    a, b = dense.mix(x, expert_input, bank), paired.mix(x, expert_input, bank)
    torch.testing.assert_close(b.out, a.out)
    torch.testing.assert_close(paired.dense(paired(x)), dense(x))
    a.out.square().sum().backward()
    b.out.square().sum().backward()
    assert dense.weight.grad is not None and paired.weight.grad is not None
    torch.testing.assert_close(
        paired.weight.grad, dense.weight.grad[paired.gate_of, :, paired.expert_of].t()
    )
