"""weighted_scatter_add against a loop of out[index] += weight * value."""

from __future__ import annotations

import torch

from polytask.nn.dispatch import weighted_scatter_add


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
