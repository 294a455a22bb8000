"""MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task."""

from __future__ import annotations

import torch

from polytask.arch.base import ARCHS, SharingArch
from polytask.config import ModelSpec
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import SoftmaxGates, mix_experts


@ARCHS.register("mmoe")
class MMoE(SharingArch):
    """E experts computed as one fused bank; task t reads sum_e gate_t(x)_e * expert_e(x).

    ``last_gate_weights`` keeps the most recent gate output [T, B, E] (detached) so that
    utilisation can be reported without a second forward pass.
    """

    def __init__(self, in_dim: int, num_tasks: int, spec: ModelSpec) -> None:
        super().__init__(in_dim, num_tasks, spec)
        self.experts = ExpertBank(spec.num_experts, in_dim, spec.hidden, dropout=spec.dropout)
        self.gates = SoftmaxGates(num_tasks, in_dim, spec.num_experts)
        self.last_gate_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.gates(x)  # [T, B, E]
        self.last_gate_weights = gates.detach()
        return mix_experts(gates, self._experts_out(x))  # [T, B, out]

    def _experts_out(self, x: torch.Tensor) -> torch.Tensor:
        """Expert outputs [E, B, out], kept as the representation every task reads."""
        self.shared_representation = self.experts(x)
        return self.shared_representation
