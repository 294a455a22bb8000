"""Single-task baselines: one independent network per task, nothing shared."""

from __future__ import annotations

import torch

from polytask.arch.base import ARCHS, SharingArch
from polytask.config import ModelSpec
from polytask.nn.experts import ExpertBank


@ARCHS.register("single")
class SingleTask(SharingArch):
    """T separate bottoms (and, through ``input_per_task``, T separate encoders).

    Parameters are disjoint and the total loss is a sum, so each task's network gets exactly
    the gradient of its own loss: the same as training T models one by one, computed as
    batched products in one pass.
    """

    input_per_task = True

    def __init__(self, in_dim: int, num_tasks: int, spec: ModelSpec) -> None:
        super().__init__(in_dim, num_tasks, spec)
        self.bottoms = ExpertBank(num_tasks, in_dim, spec.hidden, dropout=spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottoms(x)  # [T, B, in] -> [T, B, out]
