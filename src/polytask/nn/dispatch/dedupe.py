"""Merge repeated (row, expert) pairs so that each expert computes a row once."""

from __future__ import annotations

import torch


def merge_duplicates(
    rows: torch.Tensor, experts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unique (row, expert) pairs of assignments already sorted by (expert, row).

    Several tasks may route the same row to the same expert; the expert reads the shared
    input, so its output for that row is the same for every task and is computed once. The
    input must be sorted by :func:`~polytask.nn.dispatch.sort.sort_by_expert` (copies of a
    pair adjacent); one pass marks where a new pair starts, with no hashing or second sort.

    Shapes: rows [N], experts [N] -> pair_rows [P], pair_experts [P], slot [N], where
    ``slot[i]`` is the pair that assignment ``i`` reads. Pairs stay sorted by expert.
    """
    starts = torch.ones_like(rows, dtype=torch.bool)
    starts[1:] = (rows[1:] != rows[:-1]) | (experts[1:] != experts[:-1])
    slot = torch.cumsum(starts, dim=0) - 1
    return rows[starts], experts[starts], slot
