"""Gates: per-task softmax weights over experts, all gates in one matrix product."""

from __future__ import annotations

import torch
from torch import nn

ELEMENTWISE_MIX_LIMIT = 1024  # experts x width up to which mix_experts broadcasts


def softmax_last(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis (the experts), written out: on CPU ``torch.softmax``
    over an axis of a few elements costs several times more than these three fused-friendly
    elementwise ops. Entries at -inf get weight exactly 0."""
    shifted = logits - logits.amax(dim=-1, keepdim=True).detach()
    exp = shifted.exp()
    return exp / exp.sum(dim=-1, keepdim=True)


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
        return softmax_last(logits).transpose(0, 1)

    def extra_repr(self) -> str:
        return f"gates={self.num_gates}, experts={self.num_experts}"


def mix_experts(gates: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sum of expert outputs.

    gates [G, B, E], experts [E, B, D] -> [G, B, D]. For small experts a broadcast multiply
    and a sum over experts beats B tiny matrix products on CPU; for wide ones the broadcast
    intermediate [G, B, E, D] costs more memory traffic than einsum's batched contraction
    (measured on the MMoE paper's 8 x 16 and a 16 x 128 bank).
    """
    if experts.shape[0] * experts.shape[2] <= ELEMENTWISE_MIX_LIMIT:
        return (gates.unsqueeze(-1) * experts.transpose(0, 1).unsqueeze(0)).sum(2)
    return torch.einsum("gbe,ebd->gbd", gates, experts)


class MaskedGates(nn.Module):
    """G softmax gates over a common pool of E experts, each allowed only some of them.

    CGC and PLE give each task a gate over its own experts plus the shared ones; laying every
    gate over the whole pool with the disallowed experts masked to zero weight keeps all gates
    in one product and all mixing in one batched product.

    Args:
        allowed: [G, E] bool, which experts each gate may weight.
        per_gate_input: gates read their own input [G, B, in] instead of a shared [B, in].

    Shapes: x [B, in] or [G, B, in] -> weights [G, B, E], zero where not allowed.
    """

    def __init__(self, allowed: torch.Tensor, in_dim: int, per_gate_input: bool = False) -> None:
        super().__init__()
        num_gates, num_experts = allowed.shape
        self.num_gates, self.num_experts = num_gates, num_experts
        self.per_gate_input = per_gate_input
        self.weight = nn.Parameter(torch.empty(num_gates, in_dim, num_experts))
        self.bias = nn.Parameter(torch.empty(num_gates, 1, num_experts))
        self.register_buffer("blocked", ~allowed.unsqueeze(1))  # [G, 1, E]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / self.weight.shape[1] ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_gate_input:
            logits = torch.baddbmm(self.bias, x, self.weight)
        else:
            in_dim = self.weight.shape[1]
            flat = self.weight.permute(1, 0, 2).reshape(in_dim, -1)
            logits = (x @ flat).view(x.shape[0], self.num_gates, self.num_experts)
            logits = logits.transpose(0, 1) + self.bias
        return softmax_last(logits.masked_fill(self.blocked, float("-inf")))

    def extra_repr(self) -> str:
        shape = f"gates={self.num_gates}, experts={self.num_experts}"
        return f"{shape}, per_gate_input={self.per_gate_input}"
