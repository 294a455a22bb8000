"""DARE (Yu et al., ICML 2024, "Language models are Super Mario"): drop and rescale.

Each entry of each task vector is dropped with probability ``rate`` and the survivors are
divided by ``1 - rate``, so every entry keeps its expected value: E[mask / (1 - p)] = 1. The
sparsified vectors are then merged by task arithmetic or by TIES.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from polytask.merge.base import MERGERS, MergeInputs, MergeMethod, MethodOptions, StateDict
from polytask.merge.task_arithmetic import task_arithmetic
from polytask.merge.ties import Aggregate, ties


def drop_and_rescale(vector: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Zero each entry with probability ``rate``, divide the rest by ``1 - rate``."""
    if rate <= 0.0:
        return vector.clone()
    kept = torch.rand(vector.shape, generator=generator) >= rate
    return vector * kept / (1.0 - rate)


def dare(vectors: Sequence[StateDict], rate: float, seed: int) -> list[StateDict]:
    """Every task vector dropped and rescaled, tensor by tensor, from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return [
        {key: drop_and_rescale(value, rate, generator) for key, value in vector.items()}
        for vector in vectors
    ]


class DareOptions(MethodOptions):
    rate: float = Field(0.5, ge=0.0, lt=1.0, description="probability of dropping an entry")
    scaling: float = Field(0.3, description="λ, the coefficient of the merged task vector")
    seed: int = Field(0, description="seeds the drop masks")


class DareTiesOptions(DareOptions):
    keep: float = Field(0.2, gt=0.0, le=1.0, description="TIES: share of each vector kept")
    aggregate: Aggregate = Field("mean", description="TIES: disjoint mean, sum or max")


@MERGERS.register("dare_task_arithmetic")
class DareTaskArithmetic(MergeMethod):
    """DARE then task arithmetic: drop task-vector entries at random, rescale the rest, and
    add λ times their sum to the base."""

    Options = DareOptions

    def merge(self, inputs: MergeInputs) -> StateDict:
        options = self.options
        assert isinstance(options, DareOptions)
        vectors = dare(inputs.vectors(), options.rate, options.seed)
        return task_arithmetic(inputs.base, vectors, options.scaling)


@MERGERS.register("dare_ties")
class DareTies(MergeMethod):
    """DARE then TIES: drop task-vector entries at random, rescale the rest, then trim,
    elect signs and merge disjointly."""

    Options = DareTiesOptions

    def merge(self, inputs: MergeInputs) -> StateDict:
        options = self.options
        assert isinstance(options, DareTiesOptions)
        vectors = dare(inputs.vectors(), options.rate, options.seed)
        return ties(inputs.base, vectors, options.keep, options.scaling, options.aggregate)
