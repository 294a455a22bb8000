"""segment_sizes / segment_offsets against counting in a loop."""

from __future__ import annotations

import torch

from polytask.nn.dispatch import segment_offsets, segment_sizes


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
