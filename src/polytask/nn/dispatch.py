"""Sparse expert dispatch, one small function per primitive (the MegaBlocks decomposition).

A sparse mixture routes each (row, task) to a few experts. Instead of padding every expert to
a fixed capacity or masking a dense product, the assignments are laid out so that each expert
reads one contiguous block of rows:

1. :func:`sort_by_expert` orders the flat assignments by (expert, row);
2. :func:`merge_duplicates` keeps one copy of each (row, expert) pair, since experts read the
   shared input and several tasks picking the same expert for a row need it computed once;
3. :func:`segment_sizes` / :func:`segment_offsets` give each expert's block (a histogram);
4. :func:`gather_rows` copies the input rows into those blocks;
5. :func:`grouped_addmm` runs each expert's layer on its own block only (grouped GEMM);
6. :func:`weighted_scatter_add` scales each assignment by its routing weight and adds it back
   to its (task, row) output slot.

Each op is small, differentiable where it carries values, and tested against a naive loop.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def segment_sizes(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """How many rows each expert receives: its segment length in the sorted layout.

    Shapes: experts [N] int64 in ``[0, num_experts)`` -> sizes [num_experts] int64 (zeros
    included, so that segment e always starts at ``offsets[e]``).
    """
    return torch.bincount(experts, minlength=num_experts)


def segment_offsets(sizes: torch.Tensor) -> torch.Tensor:
    """Where each segment starts: [E] sizes -> [E + 1] offsets, ``offsets[-1] == N``."""
    return torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, dim=0)])


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` in the order ``index`` names them; differentiable (backward scatters).

    Used twice in dispatch: input rows into contiguous expert segments, and each expert's
    output for a (row, expert) pair out to every assignment that reads it.

    Shapes: x [M, D], index [N] int64 in ``[0, M)`` -> [N, D].
    """
    return x.index_select(0, index)


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


def weighted_scatter_add(
    values: torch.Tensor, weights: torch.Tensor, index: torch.Tensor, size: int
) -> torch.Tensor:
    """``out[index[i]] += weights[i] * values[i]``, into a zero [size, D] tensor.

    Each assignment carries its routing weight; slots that several assignments target (the
    k experts of one (task, row)) receive the weighted sum, slots no assignment targets stay
    zero. Differentiable in ``values`` and ``weights``.

    Shapes: values [N, D], weights [N], index [N] int64 in ``[0, size)`` -> [size, D].
    """
    weighted = values * weights.unsqueeze(-1)  # in the promoted dtype (mixed precision)
    return weighted.new_zeros(size, values.shape[-1]).index_add_(0, index, weighted)
