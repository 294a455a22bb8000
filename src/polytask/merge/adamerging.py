"""AdaMerging (Yang et al., ICLR 2024): merging coefficients learnt by entropy minimisation.

Task arithmetic with one learnt coefficient per task (task-wise, θ = θ_0 + Σ_k λ_k τ_k) or per
task and tensor (layer-wise, θ = θ_0 + Σ_k λ_k^l τ_k^l, one λ per parameter tensor as in
FusionBench). The paper's surrogate objective needs no labels: the entropy of the merged
model's predictions on unlabelled rows of every task, summed over tasks (classification
tasks; a regression has no entropy and does not count),
min_λ Σ_k Σ_{x ∈ B_k} H(f(x; θ(λ))), since low entropy tracks low error on a task's own rows.
Adam on λ from λ = ``init``, a fresh batch of each run's rows every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from polytask.merge.base import MERGERS, MergeInputs, MergeMethod, Objective, RowOptions, StateDict


def combine(
    base: StateDict, vectors: Sequence[StateDict], coefficients: torch.Tensor, keys: list[str]
) -> StateDict:
    """θ_0 + Σ_k λ_k τ_k; ``coefficients`` is [K] (task-wise) or [K, len(keys)] (one per
    task and tensor, in the order of ``keys``)."""
    merged = {}
    for index, key in enumerate(keys):
        column = coefficients if coefficients.dim() == 1 else coefficients[:, index]
        merged[key] = base[key] + sum(column[k] * vector[key] for k, vector in enumerate(vectors))
    return merged


def adamerge(
    base: StateDict,
    vectors: Sequence[StateDict],
    objective: Objective,
    granularity: Literal["task", "layer"],
    init: float,
    steps: int,
    lr: float,
    clamp: bool = False,
) -> tuple[StateDict, torch.Tensor, list[float]]:
    """Minimise ``objective`` over the coefficients; returns the merged tensors, the learnt
    coefficients and the objective at every step."""
    keys = list(base)
    shape = (len(vectors),) if granularity == "task" else (len(vectors), len(keys))
    coefficients = torch.full(shape, float(init), requires_grad=True)
    optimizer = torch.optim.Adam([coefficients], lr=lr)
    history = []
    for _ in range(steps):
        loss = objective(combine(base, vectors, coefficients, keys))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
        if clamp:
            with torch.no_grad():
                coefficients.clamp_(0.0, 1.0)
    with torch.no_grad():
        merged = combine(base, vectors, coefficients, keys)
    return merged, coefficients.detach(), history


class AdaMergingOptions(RowOptions):
    split: Literal["train", "valid", "test"] = Field(
        "valid", description="which split of each run's data to adapt on (labels unused)"
    )
    samples: int = Field(1024, ge=1, description="rows per run to draw batches from")
    granularity: Literal["task", "layer"] = Field(
        "layer", description="one λ per task, or per task and tensor"
    )
    init: float = Field(0.3, description="starting λ")
    steps: int = Field(300, ge=1, description="Adam steps")
    lr: float = Field(1e-3, gt=0.0, description="Adam learning rate")
    batch_size: int = Field(16, ge=1, description="rows per run per step")
    clamp: bool = Field(False, description="keep λ in [0, 1]")


@MERGERS.register("adamerging")
class AdaMerging(MergeMethod):
    """AdaMerging: task-wise or layer-wise task-arithmetic coefficients learnt by minimising
    the prediction entropy on unlabelled rows of each run."""

    Options = AdaMergingOptions
    reads = ("entropy",)

    def merge(self, inputs: MergeInputs) -> StateDict:
        o = self.options
        assert isinstance(o, AdaMergingOptions)
        objective = inputs.require_statistics("adamerging").entropy(o, o.batch_size)
        merged, coefficients, history = adamerge(
            inputs.base, inputs.vectors(), objective, o.granularity, o.init, o.steps, o.lr, o.clamp
        )
        self.report = {
            "coefficients": coefficients.tolist(),
            "entropy_first": history[0],
            "entropy_last": history[-1],
        }
        return merged
