"""gather_rows against a Python list of rows, values and gradient."""

from __future__ import annotations

import torch

from polytask.nn.dispatch import gather_rows


def test_rows_in_index_order_with_repeats_and_scattered_gradient():
    x = torch.randn(5, 3, requires_grad=True)
    index = torch.tensor([4, 0, 0, 2])
    out = gather_rows(x, index)
    torch.testing.assert_close(out, torch.stack([x[i] for i in index.tolist()]))
    out.sum().backward()
    assert x.grad is not None
    assert x.grad[:, 0].tolist() == [2.0, 0.0, 1.0, 0.0, 1.0]  # row 0 read twice, 1 and 3 never
