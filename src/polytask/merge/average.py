"""Simple averaging (Wortsman et al. 2022, "model soups"): the mean of the fine-tuned weights."""

from __future__ import annotations

from collections.abc import Sequence

from polytask.merge.base import MERGERS, MergeInputs, MergeMethod, StateDict
from polytask.merge.vectors import apply, mean_over_holders


def average(base: StateDict, tuned: Sequence[StateDict], held: Sequence[StateDict]) -> StateDict:
    """θ = mean of θ_k over the runs that hold each element (θ_0 where none does)."""
    vectors = [{key: state[key] - base[key] for key in base} for state in tuned]
    return apply(base, mean_over_holders(vectors, held))


@MERGERS.register("average")
class Average(MergeMethod):
    """Simple averaging: the element-wise mean of the fine-tuned runs' weights."""

    def merge(self, inputs: MergeInputs) -> StateDict:
        return average(inputs.base, inputs.tuned, inputs.held)
