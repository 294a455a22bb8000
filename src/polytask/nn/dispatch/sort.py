"""Sort flat routing assignments by expert, the first step of segment-wise dispatch."""

from __future__ import annotations

import torch


def sort_by_expert(
    experts: torch.Tensor, rows: torch.Tensor, num_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Permutation that orders assignments by expert, ties broken by row.

    Sorting by expert makes each expert's assignments one contiguous segment. Breaking ties by
    row puts copies of the same (row, expert) pair next to each other, so they can be merged
    in one linear pass, and lets each segment read the input in increasing row order.

    Args:
        experts: [N] int64 expert id of each assignment.
        rows: [N] int64 input row of each assignment, in ``[0, num_rows)``.
        num_rows: number of input rows (makes the combined sort key unique per pair).

    Returns:
        order [N]: ``experts[order]`` is sorted (stable among equal pairs).
        inverse [N]: ``order[inverse] == arange(N)``, to put sorted values back.
    """
    key = experts * num_rows + rows
    order = torch.sort(key, stable=True).indices
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return order, inverse
