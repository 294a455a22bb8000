"""Task arithmetic (Ilharco et al., ICLR 2023): θ = θ_0 + λ Σ_k τ_k."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from polytask.merge.base import MERGERS, MergeInputs, MergeMethod, MethodOptions, StateDict


def task_arithmetic(base: StateDict, vectors: Sequence[StateDict], scaling: float) -> StateDict:
    """θ_0 + scaling * the sum of the task vectors."""
    return {key: base[key] + scaling * sum(vector[key] for vector in vectors) for key in base}


class TaskArithmeticOptions(MethodOptions):
    scaling: float = Field(0.3, description="λ, the coefficient of the summed task vectors")


@MERGERS.register("task_arithmetic")
class TaskArithmetic(MergeMethod):
    """Task arithmetic: the base plus λ times the sum of the task vectors."""

    Options = TaskArithmeticOptions

    def merge(self, inputs: MergeInputs) -> StateDict:
        assert isinstance(self.options, TaskArithmeticOptions)
        return task_arithmetic(inputs.base, inputs.vectors(), self.options.scaling)
