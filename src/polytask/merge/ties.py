"""TIES-merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint merge.

1. Trim: keep each task vector's top ``keep`` share of entries by magnitude, over all merged
   tensors at once, and zero the rest.
2. Elect: per entry, the sign of the larger total mass, sgn(Σ_k trimmed τ_k); an entry whose
   sum is exactly zero takes the sign most entries elected (the majority).
3. Disjoint merge: per entry, the mean (or sum, or signed maximum) over the tasks whose
   trimmed value is non-zero and agrees with the elected sign.

θ = θ_0 + λ * merged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from polytask.merge.base import MERGERS, MergeInputs, MergeMethod, MethodOptions, StateDict
from polytask.merge.vectors import flatten, unflatten

Aggregate = Literal["mean", "sum", "max"]


def trim(vectors: torch.Tensor, keep: float) -> torch.Tensor:
    """[K, N] -> each row with all but its ⌈N keep⌉ largest |entries| set to zero (entries
    tied with the smallest kept magnitude stay too)."""
    width = vectors.shape[1]
    count = math.ceil(width * keep)
    if count >= width:
        return vectors.clone()
    magnitude = vectors.abs()
    threshold = magnitude.kthvalue(width - count + 1, dim=1, keepdim=True).values
    return vectors * (magnitude >= threshold)


def elect_sign(trimmed: torch.Tensor) -> torch.Tensor:
    """[K, N] -> [N] in {-1, +1}: the sign of each entry's summed mass; zero sums take the
    sign most entries elected (+1 on a tie)."""
    sign = torch.sign(trimmed.sum(dim=0))
    majority = 1.0 if float(sign.sum()) >= 0 else -1.0
    return torch.where(sign == 0, torch.full_like(sign, majority), sign)


def disjoint_merge(trimmed: torch.Tensor, sign: torch.Tensor, aggregate: Aggregate) -> torch.Tensor:
    """[K, N] and the elected signs [N] -> [N]: the entries that agree with the sign,
    aggregated over the tasks that have them (a mean ignores the others)."""
    agrees = torch.where(sign > 0, trimmed > 0, trimmed < 0)
    selected = trimmed * agrees
    if aggregate == "sum":
        return selected.sum(dim=0)
    if aggregate == "max":
        return selected.abs().amax(dim=0) * sign
    return selected.sum(dim=0) / agrees.sum(dim=0).clamp(min=1)


def ties_vector(vectors: torch.Tensor, keep: float, aggregate: Aggregate) -> torch.Tensor:
    """Trim, elect and disjoint-merge flat task vectors [K, N] into one [N]."""
    trimmed = trim(vectors, keep)
    return disjoint_merge(trimmed, elect_sign(trimmed), aggregate)


def ties(
    base: StateDict,
    vectors: Sequence[StateDict],
    keep: float,
    scaling: float,
    aggregate: Aggregate = "mean",
) -> StateDict:
    """θ_0 + scaling * TIES(τ_1..τ_K), the trimming taken over every tensor at once."""
    keys = list(base)
    merged = ties_vector(flatten(vectors, keys), keep, aggregate)
    return {
        key: base[key] + scaling * value for key, value in unflatten(merged, base, keys).items()
    }


class TiesOptions(MethodOptions):
    keep: float = Field(0.2, gt=0.0, le=1.0, description="share of each task vector kept (top |τ|)")
    scaling: float = Field(1.0, description="λ, the coefficient of the merged task vector")
    aggregate: Aggregate = Field("mean", description="disjoint mean (the paper's), sum or max")


@MERGERS.register("ties")
class Ties(MergeMethod):
    """TIES-merging: trim each task vector to its largest entries, elect a sign per entry,
    and average the entries that agree with it."""

    Options = TiesOptions

    def merge(self, inputs: MergeInputs) -> StateDict:
        options = self.options
        assert isinstance(options, TiesOptions)
        return ties(inputs.base, inputs.vectors(), options.keep, options.scaling, options.aggregate)
