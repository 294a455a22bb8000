"""merge_duplicates against a dict of distinct (row, expert) pairs."""

from __future__ import annotations

import torch

from polytask.nn.dispatch import merge_duplicates, sort_by_expert


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
