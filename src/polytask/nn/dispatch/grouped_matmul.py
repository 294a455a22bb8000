"""Grouped GEMM: each expert's weight times its own contiguous segment of rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def grouped_addmm(
    x: torch.Tensor, sizes: Sequence[int], weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``x[segment e] @ weight[e] + bias[e]`` for every non-empty segment, concatenated.

    An expert only ever multiplies the rows routed to it, so the work is proportional to the
    assignments rather than to E x B. On CPU a loop of ``addmm`` over the non-empty segments
    is the grouped GEMM; a GPU kernel could replace this one function.

    Args:
        x: [N, in] rows sorted by expert, segment e of length ``sizes[e]``.
        sizes: E segment lengths (Python ints; they set the slicing) summing to N.
        weight: [E, in, out], the :class:`~polytask.nn.experts.ExpertBank` layout.
        bias: [E, 1, out].

    Returns:
        [N, out], row i from the expert whose segment holds row i.
    """
    pieces = []
    start = 0
    for expert, size in enumerate(sizes):
        if size == 0:
            continue
        pieces.append(torch.addmm(bias[expert], x[start : start + size], weight[expert]))
        start += size
    if not pieces:
        return x.new_zeros(0, weight.shape[-1])
    return torch.cat(pieces)
