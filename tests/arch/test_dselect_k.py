"""DSelect-k: selector distributions, exact one-hot selection once the smooth-step saturates
(against the experts' closed form), expert counts that are not powers of two, the entropy
penalty, and a short end-to-end run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import polytask
from polytask.arch.dselect_k import DSelectKOptions
from polytask.nn.dselect import DSelectKGates, binary_codes, code_to_expert, smooth_step
from polytask.nn.executor import PlanNetwork
from polytask.plan.schema import full
from tests.arch.helpers import network
from tests.conftest import base_spec


def make_arch(num_experts: int, **options) -> PlanNetwork:
    return network("dselect_k", 5, 2, hidden=[4], num_experts=num_experts, options=options)


def make_gates(num_gates: int, in_dim: int, num_experts: int, **options) -> DSelectKGates:
    """Gates over every expert of the pool, with the architecture's options (validated)."""
    kwargs = DSelectKOptions(**options).model_dump()
    return DSelectKGates([full(num_experts)] * num_gates, num_experts, in_dim, **kwargs)


def saturating_logits(experts: list[int], num_bits: int, gamma: float) -> torch.Tensor:
    """Selector logits [len(experts), m] far outside [-gamma/2, gamma/2], spelling each
    expert's binary code (least significant bit first)."""
    bits = (torch.tensor(experts)[:, None] >> torch.arange(num_bits)) & 1
    return (2.0 * bits - 1.0) * 10 * gamma


def test_smooth_step_is_zero_cubic_one():
    gamma = 2.0
    t = torch.tensor([-5.0, -1.0, -0.5, 0.0, 0.5, 1.0, 5.0])
    expected = torch.tensor([0.0, 0.0, 0.15625, 0.5, 0.84375, 1.0, 1.0])
    torch.testing.assert_close(smooth_step(t, gamma), expected)


@pytest.mark.parametrize("num_experts", [3, 4, 5])
@pytest.mark.parametrize("per_example", [False, True])
def test_selector_distributions_are_probabilities(num_experts, per_example):
    torch.manual_seed(num_experts)
    gates = make_gates(2, 5, num_experts, k=3, per_example=per_example)
    with torch.no_grad():  # spread the logits across the cubic and saturated regions
        for param in gates.parameters():
            param.normal_()
    weights, dists = gates(torch.randn(6, 5))
    assert weights.shape == (2, 6, num_experts)
    assert dists.shape == ((2, 6, 3, num_experts) if per_example else (2, 3, num_experts))
    for probs in (weights, dists):
        assert (probs >= 0).all()
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))


def test_saturated_selectors_are_one_hot_and_pick_exactly_their_experts():
    torch.manual_seed(0)
    arch = make_arch(num_experts=5, k=2)  # m = 3 bits, codes 5..7 name no expert
    level = arch.levels[0]
    choices = [[3, 3], [1, 4]]  # task 0: both selectors on expert 3; task 1: experts 1 and 4
    with torch.no_grad():
        for task, experts in enumerate(choices):
            level.gates.z_logits[task] = saturating_logits(experts, 3, gamma=1.0)
        level.gates.w_logits.copy_(torch.tensor([[0.3, -0.2], [0.7, -0.4]]))
    x = torch.randn(6, 5)
    result = arch(x)
    out = result.tasks
    _, dists = level.gates(x)
    for task, experts in enumerate(choices):
        for selector, expert in enumerate(experts):
            assert torch.equal(dists[task, selector], torch.eye(5)[expert])
    experts_out = level.experts(x)  # [E, B, D]
    torch.testing.assert_close(out[0], experts_out[3])
    w = torch.softmax(torch.tensor([0.7, -0.4]), dim=0)
    torch.testing.assert_close(out[1], w[0] * experts_out[1] + w[1] * experts_out[4])
    assert result.task_gates is not None
    assert torch.equal(result.task_gates[0], torch.eye(5)[3].expand(6, -1))


def test_codes_without_an_expert_hand_their_mass_to_a_real_one():
    assert binary_codes(3).int().tolist() == [[0, 0], [1, 0], [0, 1], [1, 1]]
    assert code_to_expert(3).argmax(1).tolist() == [0, 1, 2, 1]  # code 3 = 0b11 -> 0b01
    gates = make_gates(1, 2, 3, k=1)
    # soft bits (0.84375, 0.15625): codes 0..3 get a*b products; code 3 adds to expert 1
    a, b = 0.84375, 0.15625
    dist = gates.selectors(torch.tensor([0.25, -0.25]))
    expected = torch.tensor([(1 - a) * (1 - b), a * (1 - b) + a * b, (1 - a) * b])
    torch.testing.assert_close(dist, expected)
    # saturated on code 3, which names no expert: exactly one-hot on expert 1, not lost
    assert torch.equal(gates.selectors(torch.tensor([5.0, 5.0])), torch.tensor([0.0, 1.0, 0.0]))
    single = make_arch(num_experts=1)  # zero bits: the only expert always has weight 1
    x = torch.randn(3, 5)
    torch.testing.assert_close(single(x).tasks, single.levels[0].experts(x).expand(2, -1, -1))


def test_static_gates_are_shared_by_rows_and_per_example_gates_are_not():
    torch.manual_seed(1)
    x = torch.randn(4, 5)
    static, per_example = make_arch(4)(x), make_arch(4, per_example=True)(x)
    assert static.tasks.shape == per_example.tasks.shape == (2, 4, 4)
    rows, per_row = static.task_gates, per_example.task_gates
    assert rows is not None and per_row is not None
    assert torch.equal(rows, rows[:, :1].expand_as(rows))
    assert not torch.allclose(per_row[:, 0], per_row[:, 1])


@pytest.mark.parametrize("per_example", [False, True])
def test_entropy_penalty_only_in_training_and_only_when_asked(per_example):
    torch.manual_seed(2)
    arch = make_arch(4, k=2, entropy_reg=0.5, per_example=per_example).train()
    gates = arch.levels[0].gates
    x = torch.randn(6, 5)
    auxiliary = arch(x).auxiliary
    _, dists = gates(x)
    entropy = -(dists * torch.log(dists + 1e-6)).sum(-1)  # [T, k] or [T, B, k]
    expected = entropy.sum() if not per_example else entropy.sum() / 6
    assert auxiliary is not None
    torch.testing.assert_close(auxiliary, 0.5 * expected)
    auxiliary.backward()
    z_param = next(gates.z_logits.parameters()) if per_example else gates.z_logits
    assert torch.count_nonzero(z_param.grad) > 0
    arch.eval()
    assert arch(x).auxiliary is None
    plain = make_arch(4).train()
    assert plain(x).auxiliary is None


def test_trains_end_to_end_and_rejects_unknown_options(
    tmp_path: Path, table_csv: Path, table: pd.DataFrame
):
    model = {
        "arch": "dselect_k",
        "hidden": [6],
        "num_experts": 3,
        "options": {"k": 2, "per_example": True, "entropy_reg": 0.01},
    }
    spec = base_spec(table_csv, model=model, train={"epochs": 2})
    predictor = polytask.train(spec, out=tmp_path / "run", progress=False)
    assert len(predictor.predict(table.head(20))) == 20
    assert (predictor.run / "experts.json").is_file()
    bad = base_spec(table_csv, model={"arch": "dselect_k", "options": {"top_k": 2}})
    with pytest.raises(polytask.ConfigError, match="top_k"):
        polytask.train(bad, out=tmp_path / "bad", progress=False)
