"""Weighted scatter-add: combine routed expert outputs back into their output slots."""

from __future__ import annotations

import torch


def weighted_scatter_add(
    values: torch.Tensor, weights: torch.Tensor, index: torch.Tensor, size: int
) -> torch.Tensor:
    """``out[index[i]] += weights[i] * values[i]``, into a zero [size, D] tensor.

    Each assignment carries its routing weight; slots that several assignments target (the
    k experts of one (task, row)) receive the weighted sum, slots no assignment targets stay
    zero. Differentiable in ``values`` and ``weights``.

    Shapes: values [N, D], weights [N], index [N] int64 in ``[0, size)`` -> [size, D].
    """
    out = values.new_zeros(size, values.shape[-1])
    return out.index_add_(0, index, values * weights.unsqueeze(-1))
