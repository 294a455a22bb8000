"""Softmax gates stored per allowed (gate, expert) pair: linear in the number of tasks.

CGC and PLE give each task a gate over its own experts and the shared ones. Laid over the
level's whole pool (:class:`~polytask.nn.gates.SoftmaxGates`), T gates over T task experts
plus the shared ones cost T x (T + S) logits, weights and mixing terms, most of them masked
to zero: at T = 150 that is 150 x 154 where 150 x 5 are used, and it made an epoch of CGC 95
times slower than at T = 10. Here every gate keeps only its allowed pairs, all gates in one
product (``x @ W`` with W [in, P] over the P pairs, or one gathered product where each gate
reads its own input), a softmax per gate over its segment of pairs, and the mixture is one
gather of expert outputs and one ``index_add`` over the pairs: cost and parameters grow with
P, linearly in T.

The function is the same as the dense layout's (same logits, same softmax over the allowed
experts, same mixture); :func:`softmax_gates` picks this layout where the allowed pairs are
at most :data:`PAIRED_SHARE` of the pool. A run saved with the dense layout loads into this
one (the allowed entries of the dense tensors are copied).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from polytask.nn.gates import (
    GateBank,
    LeanMixture,
    Mixed,
    SoftmaxGates,
    init_like_linear,
    renumber_allowed,
)

# Paired layout where the allowed (gate, expert) pairs are at most this share of G x E.
PAIRED_SHARE = 0.25


class PairedSoftmaxGates(GateBank):
    """G linear-softmax gates, each over its allowed experts only.

    Shapes: x [B, in] or [G, B, in] -> weights [B, P] over the pairs; mixtures [G, B, D].
    Pairs are ordered gate by gate, each gate's in the order of its allowed list.
    """

    gate_of: torch.Tensor
    expert_of: torch.Tensor

    def __init__(
        self,
        allowed: Sequence[Sequence[int]],
        num_experts: int,
        in_dim: int,
        per_gate_input: bool = False,
    ) -> None:
        super().__init__(allowed, num_experts)
        self.in_dim, self.per_gate_input = in_dim, per_gate_input
        gate_of = [g for g, members in enumerate(self.allowed) for _ in members]
        expert_of = [e for members in self.allowed for e in members]
        self.register_buffer("gate_of", torch.tensor(gate_of, dtype=torch.long), persistent=False)
        self.register_buffer(
            "expert_of", torch.tensor(expert_of, dtype=torch.long), persistent=False
        )
        self.weight = nn.Parameter(torch.empty(in_dim, len(expert_of)))
        self.bias = nn.Parameter(torch.empty(len(expert_of)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each gate initialised like an ``nn.Linear(in_dim, E)`` (as the dense layout)."""
        init_like_linear(self.in_dim, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate weights per pair [B, P]: per gate a softmax over its pairs."""
        if self.per_gate_input:  # pair p reads its gate's input
            logits = torch.einsum("pbi,ip->bp", x.index_select(0, self.gate_of), self.weight)
            logits = logits + self.bias
        else:
            logits = torch.addmm(self.bias, x, self.weight)
        rows = logits.shape[0]
        index = self.gate_of.expand(rows, -1)
        peak = torch.full((rows, self.num_gates), float("-inf"), dtype=logits.dtype)
        peak = peak.scatter_reduce(1, index, logits.detach(), "amax")
        exp = (logits - peak.index_select(1, self.gate_of)).exp()
        total = torch.zeros(rows, self.num_gates, dtype=exp.dtype).index_add(1, self.gate_of, exp)
        return exp / total.index_select(1, self.gate_of)

    def dense(self, weights: torch.Tensor) -> torch.Tensor:
        """Pair weights [B, P] as the dense layout's [G, B, E] (0 where not allowed)."""
        rows = weights.shape[0]
        flat = torch.zeros(rows, self.num_gates * self.num_experts, dtype=weights.dtype)
        flat[:, self.gate_of * self.num_experts + self.expert_of] = weights
        return flat.view(rows, self.num_gates, self.num_experts).transpose(0, 1)

    def mix(
        self, gate_input: torch.Tensor, expert_input: torch.Tensor, experts: nn.Module
    ) -> Mixed:
        weights = self(gate_input)  # [B, P]
        expert_out = experts(expert_input)  # [E, B, D]
        terms = expert_out.index_select(0, self.expert_of) * weights.t().unsqueeze(-1)
        shape = (self.num_gates, *expert_out.shape[1:])
        out = torch.zeros(shape, dtype=terms.dtype).index_add(0, self.gate_of, terms)
        # the dense [G, B, E] weights are for reports and slimming (eval): not built in training
        report = None if self.training else self.dense(weights.detach())
        return Mixed(out, expert_out, report)

    # ------------------------------------------------------------------ the dense layout
    def dense_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The parameters as the dense layout holds them: [G, in, E] and [G, 1, E]."""
        weight = torch.zeros(self.num_gates, self.in_dim, self.num_experts)
        bias = torch.zeros(self.num_gates, 1, self.num_experts)
        weight[self.gate_of, :, self.expert_of] = self.weight.detach().t()
        bias[self.gate_of, 0, self.expert_of] = self.bias.detach()
        return weight, bias

    def load_dense(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Take the allowed entries of dense-layout parameters [G, in, E], [G, 1, E]."""
        with torch.no_grad():
            self.weight.copy_(weight[self.gate_of, :, self.expert_of].t())
            self.bias.copy_(bias[self.gate_of, 0, self.expert_of])

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """A state saved with the dense layout (a run of an earlier polytask) is converted."""
        weight, bias = state_dict.get(prefix + "weight"), state_dict.get(prefix + "bias")
        if weight is not None and bias is not None and weight.dim() == 3:
            state_dict[prefix + "weight"] = weight[self.gate_of, :, self.expert_of].t()
            state_dict[prefix + "bias"] = bias[self.gate_of, 0, self.expert_of]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def select(self, gates: Sequence[int], experts: Sequence[int]) -> GateBank:
        weight, bias = self.dense_parameters()
        kept = softmax_gates(
            renumber_allowed(self.allowed, gates, experts),
            len(experts),
            self.in_dim,
            self.per_gate_input,
        )
        rows, columns = torch.tensor(list(gates)), torch.tensor(list(experts))
        load_dense(kept, weight[rows][:, :, columns], bias[rows][:, :, columns])
        return kept

    def lean(self, gate: int) -> LeanMixture:
        pairs = (self.gate_of == gate).nonzero().flatten()
        return LeanMixture(
            gate,
            list(self.allowed[gate]),
            None,
            logit_weight=self.weight[:, pairs].detach(),
            logit_bias=self.bias[pairs].detach(),
        )

    def extra_repr(self) -> str:
        pairs = len(self.expert_of)
        return f"{super().extra_repr()}, pairs={pairs}, per_gate_input={self.per_gate_input}"


def softmax_gates(
    allowed: Sequence[Sequence[int]], num_experts: int, in_dim: int, per_gate_input: bool
) -> GateBank:
    """Softmax gates in the layout that costs less: paired where few pairs are allowed."""
    pairs = sum(len(members) for members in allowed)
    if pairs <= PAIRED_SHARE * len(allowed) * num_experts:
        return PairedSoftmaxGates(allowed, num_experts, in_dim, per_gate_input)
    return SoftmaxGates(allowed, num_experts, in_dim, per_gate_input)


def load_dense(gates: GateBank, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Fill softmax gates of either layout from dense-layout parameters."""
    if isinstance(gates, PairedSoftmaxGates):
        gates.load_dense(weight, bias)
        return
    assert isinstance(gates, SoftmaxGates)
    with torch.no_grad():
        gates.weight.copy_(weight)
        gates.bias.copy_(bias)
