"""Each dispatch primitive against a naive loop."""

from __future__ import annotations

import torch

from polytask.nn.dispatch import (
    gather_rows,
    grouped_addmm,
    merge_duplicates,
    segment_offsets,
    segment_sizes,
    sort_by_expert,
    weighted_scatter_add,
)


def test_each_pair_kept_once_and_every_assignment_points_to_its_pair():
    generator = torch.Generator().manual_seed(1)
    experts = torch.randint(0, 3, (30,), generator=generator)
    rows = torch.randint(0, 4, (30,), generator=generator)
    order, _ = sort_by_expert(experts, rows, num_rows=4)
    rows, experts = rows[order], experts[order]
    pair_rows, pair_experts, slot = merge_duplicates(rows, experts)

    reference: dict[tuple[int, int], int] = {}
    for row, expert in zip(rows.tolist(), experts.tolist(), strict=True):
        reference.setdefault((expert, row), len(reference))
    pairs = list(zip(pair_experts.tolist(), pair_rows.tolist(), strict=True))
    assert pairs == list(reference)  # distinct, in first-seen (= sorted) order
    assert pair_experts.tolist() == sorted(pair_experts.tolist())
    for i in range(30):
        assert (int(pair_rows[slot[i]]), int(pair_experts[slot[i]])) == (
            int(rows[i]),
            int(experts[i]),
        )


def test_no_duplicates_is_the_identity():
    rows, experts = torch.tensor([0, 1, 0]), torch.tensor([0, 0, 2])
    pair_rows, pair_experts, slot = merge_duplicates(rows, experts)
    assert torch.equal(pair_rows, rows) and torch.equal(pair_experts, experts)
    assert slot.tolist() == [0, 1, 2]


def test_rows_in_index_order_with_repeats_and_scattered_gradient():
    x = torch.randn(5, 3, requires_grad=True)
    index = torch.tensor([4, 0, 0, 2])
    out = gather_rows(x, index)
    torch.testing.assert_close(out, torch.stack([x[i] for i in index.tolist()]))
    out.sum().backward()
    assert x.grad is not None
    assert x.grad[:, 0].tolist() == [2.0, 0.0, 1.0, 0.0, 1.0]  # row 0 read twice, 1 and 3 never


def test_each_row_uses_its_segment_expert_only():
    torch.manual_seed(3)
    weight = torch.randn(4, 3, 2, requires_grad=True)
    bias = torch.randn(4, 1, 2)
    sizes = [2, 0, 3, 1]
    x = torch.randn(6, 3)
    out = grouped_addmm(x, sizes, weight, bias)
    owner = [0, 0, 2, 2, 2, 3]
    expected = torch.stack([x[i] @ weight[e] + bias[e, 0] for i, e in enumerate(owner)])
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert weight.grad is not None
    assert torch.count_nonzero(weight.grad[1]) == 0  # an expert with no rows gets no gradient


def test_no_rows_gives_an_empty_result():
    out = grouped_addmm(torch.zeros(0, 3), [0, 0], torch.randn(2, 3, 5), torch.randn(2, 1, 5))
    assert out.shape == (0, 5)


def test_sizes_count_each_expert_including_empty_ones():
    experts = torch.tensor([0, 0, 2, 2, 2, 4])
    sizes = segment_sizes(experts, num_experts=6)
    assert sizes.tolist() == [sum(1 for e in experts.tolist() if e == i) for i in range(6)]
    assert sizes.tolist() == [2, 0, 3, 0, 1, 0]


def test_offsets_delimit_each_expert_segment_in_sorted_ids():
    experts = torch.sort(torch.randint(0, 5, (25,), generator=torch.Generator().manual_seed(2)))
    ids = experts.values
    offsets = segment_offsets(segment_sizes(ids, 5))
    assert offsets[0] == 0 and offsets[-1] == 25
    for expert in range(5):
        assert (ids[offsets[expert] : offsets[expert + 1]] == expert).all()


def test_empty_input_gives_zero_sizes():
    sizes = segment_sizes(torch.zeros(0, dtype=torch.long), num_experts=3)
    assert sizes.tolist() == [0, 0, 0]
    assert segment_offsets(sizes).tolist() == [0, 0, 0, 0]


def test_weighted_sums_per_slot_and_gradients_to_values_and_weights():
    torch.manual_seed(4)
    values = torch.randn(5, 3, requires_grad=True)
    weights = torch.rand(5, requires_grad=True)
    index = torch.tensor([2, 0, 2, 3, 0])
    out = weighted_scatter_add(values, weights, index, size=4)
    expected = torch.zeros(4, 3)
    for i, slot in enumerate(index.tolist()):
        expected[slot] += weights[i].detach() * values[i].detach()
    torch.testing.assert_close(out, expected)
    assert torch.count_nonzero(out[1]) == 0  # no assignment targets slot 1
    out.sum().backward()
    assert weights.grad is not None and values.grad is not None
    torch.testing.assert_close(weights.grad, values.detach().sum(-1))
    torch.testing.assert_close(values.grad, weights.detach().unsqueeze(-1).expand(5, 3))


def test_order_matches_a_stable_python_sort_and_inverse_undoes_it():
    generator = torch.Generator().manual_seed(0)
    experts = torch.randint(0, 4, (40,), generator=generator)
    rows = torch.randint(0, 6, (40,), generator=generator)
    order, inverse = sort_by_expert(experts, rows, num_rows=6)
    expected = sorted(range(40), key=lambda i: (int(experts[i]), int(rows[i]), i))
    assert order.tolist() == expected
    assert torch.equal(order[inverse], torch.arange(40))
    values = torch.randn(40)
    assert torch.equal(values[order][inverse], values)


def test_empty_input():
    empty = torch.zeros(0, dtype=torch.long)
    order, inverse = sort_by_expert(empty, empty, num_rows=3)
    assert order.numel() == 0 and inverse.numel() == 0
