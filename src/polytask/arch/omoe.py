"""OMoE (one-gate mixture of experts; the MMoE paper's baseline): shared experts, one gate
shared by every task."""

from __future__ import annotations

import torch

from polytask.arch.base import ARCHS, SharingArch
from polytask.config import ModelSpec
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import SoftmaxGates, mix_experts


@ARCHS.register("omoe")
class OMoE(SharingArch):
    """E fused experts mixed by a single softmax gate; every task reads the same mixture."""

    def __init__(self, in_dim: int, num_tasks: int, spec: ModelSpec) -> None:
        super().__init__(in_dim, num_tasks, spec)
        self.experts = ExpertBank(spec.num_experts, in_dim, spec.hidden, dropout=spec.dropout)
        self.gates = SoftmaxGates(1, in_dim, spec.num_experts)
        self.last_gate_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.gates(x)  # [1, B, E]
        self.last_gate_weights = gates.detach().expand(self.num_tasks, -1, -1)
        return mix_experts(gates, self._experts_out(x)).expand(self.num_tasks, -1, -1)

    def _experts_out(self, x: torch.Tensor) -> torch.Tensor:
        """Expert outputs [E, B, out], kept as the representation every task reads."""
        self.shared_representation = self.experts(x)
        return self.shared_representation
