"""Banks in blocks compute each block exactly as a plain bank of its size would."""

from __future__ import annotations

import torch

from polytask.nn.blocks import ExpertBlocks, GateBlocks, TowerBlocks, build_towers, parts
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import SoftmaxGates
from polytask.nn.topk import TopKGates
from polytask.nn.towers import Towers


def test_expert_blocks_equal_their_banks_and_select_across_blocks():
    torch.manual_seed(0)
    first, second = ExpertBank(3, 5, [4, 2]), ExpertBank(2, 5, [4, 2])
    blocks = ExpertBlocks([first, second])
    x = torch.randn(7, 5)
    out = blocks(x)
    assert torch.equal(out[:3], first(x)) and torch.equal(out[3:], second(x))
    per_expert = torch.randn(5, 7, 5)
    assert torch.equal(blocks(per_expert)[3:], second(per_expert[3:]))
    kept = blocks.select([1, 3, 4])
    assert isinstance(kept, ExpertBlocks) and kept.sizes == [1, 2]
    assert torch.equal(kept(x), out[[1, 3, 4]])
    assert isinstance(blocks.select([3]), ExpertBank)


def test_gate_blocks_mix_each_block_over_its_own_prefix():
    torch.manual_seed(1)
    experts = ExpertBlocks([ExpertBank(3, 4, [6]), ExpertBank(2, 4, [6])])
    old = SoftmaxGates([[0, 1, 2]] * 2, 3, 4)
    new = SoftmaxGates([[0, 1, 3, 4]], 5, 4)
    gates = GateBlocks([old, new], [(0, 3), (0, 5)])
    x = torch.randn(9, 4)
    mixed = gates.mix(x, x, experts)
    plain = old.mix(x, x, experts.banks[0])
    assert torch.equal(mixed.out[:2], plain.out)
    reference = new.mix(x, x, experts)
    assert torch.equal(mixed.out[2:], reference.out)
    assert mixed.weights.shape == (3, 9, 5) and (mixed.weights[:2, :, 3:] == 0).all()
    kept = gates.select([2], [0, 3, 4])
    assert isinstance(kept, SoftmaxGates) and kept.allowed == [[0, 1, 2]]


def test_top_k_gate_blocks_route_the_new_gate_over_the_whole_pool():
    torch.manual_seed(2)
    experts = ExpertBlocks([ExpertBank(3, 4, [6]), ExpertBank(1, 4, [6])])
    old = TopKGates([[0, 1, 2]] * 2, 3, 4, top_k=2, noise=0.0)
    new = TopKGates([[0, 1, 2, 3]], 4, 4, top_k=2, noise=0.0)
    gates = GateBlocks([old, new], [(0, 3), (0, 4)]).eval()
    x = torch.randn(6, 4)
    assert torch.equal(gates.mix(x, x, experts).out[:2], old.eval().mix(x, x, experts.banks[0]).out)
    dense = new.eval().router_logits(None)
    selected = dense.topk(2, dim=-1).indices.sort(dim=-1).values[0, 0].tolist()
    assert gates.fixed_support()[2] == selected


def test_top_k_gates_never_route_outside_their_allowed_experts():
    torch.manual_seed(3)
    gates = TopKGates([[0, 2]], 4, 5, top_k=2, routing="row", noise=1.0).train()
    bank = ExpertBank(4, 5, [3])
    report = gates.mix(torch.randn(50, 5), torch.randn(50, 5), bank).weights
    assert (report[:, :, [1, 3]] == 0).all()


def test_tower_blocks_read_a_common_input_once_per_block():
    torch.manual_seed(4)
    towers = build_towers(6, [5], [1, 3, 2], 0.0, [2, 1], [0, 0, 1])
    assert isinstance(towers, TowerBlocks) and towers.common == [True, True]
    first, second = parts(towers)
    x = torch.randn(3, 8, 6)
    x[1] = x[0]
    outputs = towers(x)
    expected = first.forward_common(x[0])[0]
    assert all(torch.equal(a, b) for a, b in zip(outputs[:2], expected, strict=True))
    assert torch.equal(outputs[2], second.forward_common(x[2])[0][0])
    kept = towers.select([1, 2])
    assert isinstance(kept, TowerBlocks) and kept.out_dims == [3, 2]
    assert isinstance(towers.select([2]), Towers)
