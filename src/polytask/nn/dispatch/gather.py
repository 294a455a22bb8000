"""Copy rows into the expert-sorted layout (and read per-pair results back per assignment)."""

from __future__ import annotations

import torch


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` in the order ``index`` names them; differentiable (backward scatters).

    Used twice in dispatch: input rows into contiguous expert segments, and each expert's
    output for a (row, expert) pair out to every assignment that reads it.

    Shapes: x [M, D], index [N] int64 in ``[0, M)`` -> [N, D].
    """
    return x.index_select(0, index)
