"""PCB-merging, parameter competition balancing (Du et al., NeurIPS 2024).

Each entry of each task vector gets a score from two competitions, over all merged tensors
at once (after clipping the 0.01 % extreme magnitudes of each vector):

* intra-balancing, within a task: exp(K * norm(|τ_k|)^2), norm a min-max scaling over the
  task's entries, so the task's large entries count more;
* inter-balancing, across tasks: tanh(τ_k ⊙ Σ_j τ_j), high where the task agrees with the
  others and negative where it conflicts.

Per task, entries below the top ``ratio`` of scores are dropped (score 0) and the rest
min-max scaled; the merge is the score-weighted mean Σ_k s_k τ_k / Σ_k s_k, θ = θ_0 + λ of it.
The paper then tunes λ per task with an evolutionary search on labelled validation rows;
here λ is one option.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from polytask.merge.base import MERGERS, MergeInputs, MergeMethod, MethodOptions, StateDict
from polytask.merge.vectors import flatten, unflatten

CLIP_SHARE = 0.0001  # the extreme magnitudes clipped on each side before scoring


def min_max(values: torch.Tensor) -> torch.Tensor:
    """Scale each row to [0, 1] (a constant row becomes 0)."""
    low = values.amin(dim=1, keepdim=True)
    span = values.amax(dim=1, keepdim=True) - low
    return (values - low) / span.clamp(min=torch.finfo(values.dtype).tiny)


def clip_rows(values: torch.Tensor, low_share: float, high_share: float) -> torch.Tensor:
    """Clamp each row between its ``low_share`` and ``1 - high_share`` order statistics."""
    width = values.shape[1]
    ordered = values.sort(dim=1).values
    low = ordered[:, int(width * low_share)].unsqueeze(1)
    high = ordered[:, int(width * (1 - high_share)) - 1].unsqueeze(1)
    return torch.minimum(torch.maximum(values, low), high)


def pcb_scores(vectors: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[K, N] task vectors -> (the clipped vectors, their scores in [0, 1], 0 when dropped)."""
    count = vectors.shape[0]
    magnitude = clip_rows(vectors.abs(), CLIP_SHARE, CLIP_SHARE)
    clipped = torch.sign(vectors) * magnitude
    intra = torch.exp(count * min_max(magnitude) ** 2)
    inter = torch.tanh(vectors * vectors.sum(dim=0, keepdim=True))
    score = intra * inter
    return clipped, min_max(clip_rows(score, 1.0 - ratio, 0.0))


def pcb_vector(vectors: torch.Tensor, ratio: float) -> torch.Tensor:
    """Σ_k s_k τ_k / Σ_k s_k over the flat task vectors [K, N]."""
    clipped, scores = pcb_scores(vectors, ratio)
    return (clipped * scores).sum(dim=0) / scores.sum(dim=0).clamp(min=1e-12)


def pcb(base: StateDict, vectors: Sequence[StateDict], ratio: float, scaling: float) -> StateDict:
    keys = list(base)
    merged = unflatten(pcb_vector(flatten(vectors, keys), ratio), base, keys)
    return {key: base[key] + scaling * merged[key] for key in keys}


class PcbOptions(MethodOptions):
    ratio: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="share of each task's entries kept (highest balanced scores)",
    )
    scaling: float = Field(1.0, description="λ, the coefficient of the merged task vector")


@MERGERS.register("pcb")
class Pcb(MergeMethod):
    """PCB-merging: score each task-vector entry by its weight within the task and its
    agreement across tasks, drop the low scores, and take the score-weighted mean."""

    Options = PcbOptions

    def merge(self, inputs: MergeInputs) -> StateDict:
        assert isinstance(self.options, PcbOptions)
        return pcb(inputs.base, inputs.vectors(), self.options.ratio, self.options.scaling)
