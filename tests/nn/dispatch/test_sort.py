"""sort_by_expert against Python's sorted() on (expert, row, position) keys."""

from __future__ import annotations

import torch

from polytask.nn.dispatch import sort_by_expert


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
