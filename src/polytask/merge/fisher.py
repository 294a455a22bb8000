"""Fisher merging (Matena & Raffel, NeurIPS 2022): a Fisher-weighted average.

θ = Σ_k F_k ⊙ θ_k / Σ_k F_k, with F_k the diagonal of run k's Fisher information (how much
each weight matters to the run's predictive distribution; computed by
:meth:`polytask.merge.base.Statistics.fisher` from a sample of the run's rows, no labels
needed; ``estimate`` says how the expectation over labels is taken, see
:mod:`polytask.merge.statistics`). ``floor`` is added to every Fisher entry a run holds, so
entries no run's data reaches fall back to the plain average; ``normalise`` weighs each
run's floored Fisher F_k + floor by 1 / (‖F_k‖ + floor), its L2 norm over every merged
tensor, as FusionBench's ``merging_with_fisher_weights`` does (the floor added before the
scaling, so it scales with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from polytask.merge.base import MERGERS, MergeInputs, MergeMethod, RowOptions, StateDict


def fisher_merge(
    tuned: Sequence[StateDict],
    fishers: Sequence[StateDict],
    held: Sequence[StateDict],
    floor: float = 1e-6,
    normalise: bool = False,
) -> StateDict:
    """Per element, Σ_k c_k (F_k + floor) θ_k / Σ_k c_k (F_k + floor) over the runs that
    hold it; c_k = 1 / (‖F_k‖ + floor) with ``normalise``, else 1."""
    scales = [torch.ones(()) for _ in fishers]
    if normalise:
        scales = [
            1.0 / (torch.stack([(f**2).sum() for f in fisher.values()]).sum().sqrt() + floor)
            for fisher in fishers
        ]
    merged = {}
    for key in tuned[0]:
        weights = torch.stack(
            [c * (f[key] + floor) * h[key] for f, h, c in zip(fishers, held, scales, strict=True)]
        )
        values = torch.stack([state[key] for state in tuned])
        total = weights.sum(0)
        merged[key] = torch.where(
            total > 0, (weights * values).sum(0) / total.clamp(min=1e-30), values[0]
        )
    return merged


class FisherOptions(RowOptions):
    estimate: Literal["exact", "sampled", "batch"] = Field(
        "exact",
        description="expectation over labels: exact, one label drawn per row, or batch "
        "(FusionBench's: the square of one surrogate's gradient per batch of rows)",
    )
    batch_size: int = Field(32, ge=1, description="rows per squared gradient (estimate: batch)")
    floor: float = Field(1e-6, ge=0.0, description="added to every Fisher entry")
    normalise: bool = Field(
        False, description="weigh each run's Fisher by 1 / its L2 norm (FusionBench's scaling)"
    )


@MERGERS.register("fisher")
class Fisher(MergeMethod):
    """Fisher merging: each weight averaged over the runs, weighted by its diagonal Fisher
    information on the run's rows."""

    Options = FisherOptions
    reads = ("fisher",)

    def merge(self, inputs: MergeInputs) -> StateDict:
        o = self.options
        assert isinstance(o, FisherOptions)
        fishers = inputs.require_statistics("fisher").fisher(o, o.estimate, o.batch_size)
        return fisher_merge(inputs.tuned, fishers, inputs.held, o.floor, o.normalise)
