"""LiNeS, layer-increasing network scaling (Wang et al., ICLR 2025).

A merged task vector τ_MTL (the sum of the task vectors, or their TIES merge) is scaled per
layer, linearly in depth: λ(l) = α + β l / (L - 1) for layer l of L, so shallow layers, which
hold general features, move little, and deep layers, which hold task-specific ones, move
more. For merging, α defaults to the paper's (||Σ_k τ_k||_1 / ||τ_MTL||_1) / K. Layers are
counted in the order the model registers them (encoder first, then the plan's levels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from polytask.merge.base import MERGERS, MergeInputs, MergeMethod, MethodOptions, StateDict
from polytask.merge.ties import ties_vector
from polytask.merge.vectors import flatten, unflatten


def layer_scales(depth: dict[str, int], alpha: float, beta: float) -> dict[str, float]:
    """λ per tensor: α + β depth / (deepest depth), α everywhere for a single layer."""
    levels = sorted(set(depth.values()))
    position = {value: index for index, value in enumerate(levels)}
    last = max(len(levels) - 1, 1)
    return {key: alpha + beta * position[value] / last for key, value in depth.items()}


def default_alpha(summed: torch.Tensor, merged: torch.Tensor, count: int) -> float:
    """(||Σ_k τ_k||_1 / ||τ_MTL||_1) / K: the scale at which τ_MTL moves the shallow layers as
    far as an average of the task vectors would."""
    norm = float(merged.abs().sum())
    return float(summed.abs().sum()) / norm / count if norm > 0 else 1.0 / count


def lines(
    base: StateDict,
    vectors: Sequence[StateDict],
    depth: dict[str, int],
    beta: float,
    alpha: float | None = None,
    combine: Literal["sum", "ties"] = "sum",
    keep: float = 0.2,
) -> StateDict:
    keys = list(base)
    flat = flatten(vectors, keys)
    summed = flat.sum(dim=0)
    merged = summed if combine == "sum" else ties_vector(flat, keep, "mean")
    if alpha is None:
        alpha = default_alpha(summed, merged, len(vectors))
    scales = layer_scales({key: depth[key] for key in keys}, alpha, beta)
    vector = unflatten(merged, base, keys)
    return {key: base[key] + scales[key] * vector[key] for key in keys}


class LinesOptions(MethodOptions):
    beta: float = Field(0.5, description="β: how much more the deepest layer moves than the first")
    alpha: float | None = Field(
        None, description="α: the first layer's scale (default: the paper's norm ratio / K)"
    )
    combine: Literal["sum", "ties"] = Field("sum", description="how τ_MTL is formed")
    keep: float = Field(0.2, gt=0.0, le=1.0, description="TIES share kept (combine: ties)")


@MERGERS.register("lines")
class Lines(MergeMethod):
    """LiNeS: a merged task vector scaled per layer, increasing linearly from the input side
    to the output side."""

    Options = LinesOptions

    def merge(self, inputs: MergeInputs) -> StateDict:
        o = self.options
        assert isinstance(o, LinesOptions)
        return lines(
            inputs.base, inputs.vectors(), inputs.depth, o.beta, o.alpha, o.combine, o.keep
        )
