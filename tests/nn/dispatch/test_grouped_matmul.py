"""grouped_addmm against one matrix product per row with its expert's weights."""

from __future__ import annotations

import torch

from polytask.nn.dispatch import grouped_addmm


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
