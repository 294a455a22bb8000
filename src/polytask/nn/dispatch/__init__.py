"""Sparse expert dispatch, one primitive per file (the MegaBlocks decomposition).

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

from polytask.nn.dispatch.dedupe import merge_duplicates
from polytask.nn.dispatch.gather import gather_rows
from polytask.nn.dispatch.grouped_matmul import grouped_addmm
from polytask.nn.dispatch.histogram import segment_offsets, segment_sizes
from polytask.nn.dispatch.scatter import weighted_scatter_add
from polytask.nn.dispatch.sort import sort_by_expert

__all__ = [
    "gather_rows",
    "grouped_addmm",
    "merge_duplicates",
    "segment_offsets",
    "segment_sizes",
    "sort_by_expert",
    "weighted_scatter_add",
]
