"""Shared-bottom (hard parameter sharing): one network under every task's tower."""

from __future__ import annotations

import torch

from polytask.arch.base import ARCHS, SharingArch
from polytask.config import ModelSpec
from polytask.nn.experts import ExpertBank


@ARCHS.register("shared_bottom")
class SharedBottom(SharingArch):
    """One bottom MLP whose output every task reads."""

    def __init__(self, in_dim: int, num_tasks: int, spec: ModelSpec) -> None:
        super().__init__(in_dim, num_tasks, spec)
        self.bottom = ExpertBank(1, in_dim, spec.hidden, dropout=spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.bottom(x)  # [1, B, out]
        self.shared_representation = self.common_output = shared[0]
        return shared.expand(self.num_tasks, -1, -1)
