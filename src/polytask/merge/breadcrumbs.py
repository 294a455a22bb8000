"""Model Breadcrumbs (Davari & Belilovsky, ECCV 2024): keep the middle of each task vector.

Per layer, along each row of its last axis, the largest entries of a task vector (outliers:
the top ``remove_top`` share by magnitude) and the smallest (all but the next ``keep`` share)
are masked; what is left, the "breadcrumbs", is merged by task arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field, model_validator

from polytask.merge.base import MERGERS, MergeInputs, MergeMethod, MethodOptions, StateDict
from polytask.merge.task_arithmetic import task_arithmetic


def top_mask(magnitude: torch.Tensor, count: int) -> torch.Tensor:
    """True at the ``count`` largest entries of each row of the last axis."""
    mask = torch.zeros_like(magnitude, dtype=torch.bool)
    if count > 0:
        mask.scatter_(-1, magnitude.topk(count, dim=-1).indices, True)
    return mask


def breadcrumbs_mask(vector: torch.Tensor, keep: float, remove_top: float) -> torch.Tensor:
    """``vector`` with, per row of its last axis, the top ``remove_top`` share of |entries|
    zeroed, then only the top ``keep`` share (of the row's length) of the rest kept."""
    if vector.dim() == 0:
        return vector.clone()
    width = vector.shape[-1]
    outliers = top_mask(vector.abs(), int(width * remove_top))
    trimmed = vector.masked_fill(outliers, 0.0)
    return trimmed * top_mask(trimmed.abs(), int(width * keep))


def breadcrumbs(
    base: StateDict, vectors: Sequence[StateDict], keep: float, remove_top: float, scaling: float
) -> StateDict:
    masked = [
        {key: breadcrumbs_mask(value, keep, remove_top) for key, value in vector.items()}
        for vector in vectors
    ]
    return task_arithmetic(base, masked, scaling)


class BreadcrumbsOptions(MethodOptions):
    keep: float = Field(0.1, gt=0.0, le=1.0, description="share of each row kept after outliers")
    remove_top: float = Field(
        0.01, ge=0.0, lt=1.0, description="share of each row's largest entries removed as outliers"
    )
    scaling: float = Field(0.3, description="λ, the coefficient of the summed masked vectors")

    @model_validator(mode="after")
    def _something_left(self) -> BreadcrumbsOptions:
        if self.keep + self.remove_top > 1.0:
            raise ValueError("keep + remove_top must be at most 1")
        return self


@MERGERS.register("breadcrumbs")
class Breadcrumbs(MergeMethod):
    """Model Breadcrumbs: mask each task vector's outliers and its small entries per layer,
    then add λ times the sum of what is left."""

    Options = BreadcrumbsOptions

    def merge(self, inputs: MergeInputs) -> StateDict:
        o = self.options
        assert isinstance(o, BreadcrumbsOptions)
        return breadcrumbs(inputs.base, inputs.vectors(), o.keep, o.remove_top, o.scaling)
