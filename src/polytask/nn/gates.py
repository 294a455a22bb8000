"""Gates: per-task softmax weights over experts, all gates in one matrix product."""

from __future__ import annotations

import torch
from torch import nn


class SoftmaxGates(nn.Module):
    """G linear-softmax gates over E experts, computed as one ``[in, G*E]`` product.

    Shapes: x [B, in_dim] -> weights [G, B, E] (each row sums to 1).
    """

    def __init__(self, num_gates: int, in_dim: int, num_experts: int) -> None:
        super().__init__()
        self.num_gates = num_gates
        self.num_experts = num_experts
        self.linear = nn.Linear(in_dim, num_gates * num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x).view(x.shape[0], self.num_gates, self.num_experts)
        return torch.softmax(logits, dim=-1).transpose(0, 1)

    def extra_repr(self) -> str:
        return f"gates={self.num_gates}, experts={self.num_experts}"


def mix_experts(gates: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sum of expert outputs.

    gates [G, B, E], experts [E, B, D] -> [G, B, D], as one batched product over rows.
    """
    return torch.bmm(gates.permute(1, 0, 2), experts.transpose(0, 1)).transpose(0, 1)
