"""Segment sizes and offsets of expert-sorted assignments (a histogram over expert ids)."""

from __future__ import annotations

import torch


def segment_sizes(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """How many rows each expert receives: its segment length in the sorted layout.

    Shapes: experts [N] int64 in ``[0, num_experts)`` -> sizes [num_experts] int64 (zeros
    included, so that segment e always starts at ``offsets[e]``).
    """
    return torch.bincount(experts, minlength=num_experts)


def segment_offsets(sizes: torch.Tensor) -> torch.Tensor:
    """Where each segment starts: [E] sizes -> [E + 1] offsets, ``offsets[-1] == N``."""
    return torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, dim=0)])
