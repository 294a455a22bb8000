"""HoME's experts (Wang et al. 2024): normalised layers, and per-expert feature gates.

HoME fixes two failure modes of MMoE-style models with these blocks:

* expert collapse (experts with very different output scales, many dead ReLUs): every expert
  layer is ``linear -> per-expert normalisation -> Swish``, so all experts emit outputs on
  the same scale and gates can weigh them fairly (:class:`ExpertNorm`);
* expert underfitting (sparse tasks ignoring their own experts): feature gates give every
  expert its own re-weighting of the input, ``x * 2 * sigmoid(x A_e B_e)``
  (:class:`FeatureGates`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from polytask.nn.experts import ExpertBank

NormKind = Literal["batch", "layer"]


def _index(rows: Sequence[int]) -> torch.Tensor:
    return torch.tensor(list(rows), dtype=torch.long)


class ExpertNorm(nn.Module):
    """Normalisation of E experts' outputs, statistics and affine parameters per expert.

    ``batch``: batch normalisation with statistics per (expert, feature), computed as one
    ``F.batch_norm`` over the [B, E*D] view, so E experts cost one call. A training batch of
    a single row has no variance; it is normalised with the running statistics instead.
    ``layer``: layer normalisation over each expert's D features, then a per-expert affine.

    Shapes: [E, B, D] -> [E, B, D].
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, num_experts: int, dim: int, kind: NormKind) -> None:
        super().__init__()
        self.kind: NormKind = kind
        self.weight = nn.Parameter(torch.ones(num_experts, 1, dim))
        self.bias = nn.Parameter(torch.zeros(num_experts, 1, dim))
        if kind == "batch":
            self.register_buffer("running_mean", torch.zeros(num_experts * dim))
            self.register_buffer("running_var", torch.ones(num_experts * dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        experts, batch, dim = x.shape
        if self.kind == "layer":
            return F.layer_norm(x, (dim,)) * self.weight + self.bias
        flat = x.transpose(0, 1).reshape(batch, experts * dim)
        flat = F.batch_norm(
            flat,
            self.running_mean,
            self.running_var,
            training=self.training and batch > 1,
            momentum=0.1,
            eps=1e-5,
        )
        return flat.view(batch, experts, dim).transpose(0, 1) * self.weight + self.bias

    def select(self, experts: Sequence[int]) -> ExpertNorm:
        """The given experts' affine parameters and running statistics."""
        index = _index(experts)
        count, dim = len(index), self.weight.shape[2]
        norm = ExpertNorm(count, dim, self.kind)
        with torch.no_grad():
            norm.weight.copy_(self.weight[index])
            norm.bias.copy_(self.bias[index])
            if self.kind == "batch":
                norm.running_mean.copy_(self.running_mean.view(-1, dim)[index].reshape(-1))
                norm.running_var.copy_(self.running_var.view(-1, dim)[index].reshape(-1))
        return norm

    def extra_repr(self) -> str:
        return f"kind={self.kind}, experts={self.weight.shape[0]}, dim={self.weight.shape[2]}"


class FeatureGates(nn.Module):
    """Per-expert low-rank feature gates: expert e reads ``x * 2 * sigmoid(x A_e B_e)``.

    The factor lies in (0, 2), so an expert can both damp and amplify features. ``B`` starts at
    zero (as LoRA's up-projection does), so every gate starts at exactly 1 and the network
    starts as the same network without feature gates; training then specialises the experts'
    views of the input.

    Shapes: x [B, D] (shared) or [E, B, D] (per expert) -> gated inputs [E, B, D].
    """

    def __init__(self, num_experts: int, dim: int, rank: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.down = nn.Parameter(torch.empty(num_experts, dim, rank))
        self.up = nn.Parameter(torch.zeros(num_experts, rank, dim))
        bound = 1.0 / dim**0.5
        nn.init.uniform_(self.down, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            low = torch.einsum("bd,edr->ebr", x, self.down)
            x = x.expand(self.num_experts, -1, -1)
        else:
            low = torch.bmm(x, self.down)
        return x * (2.0 * torch.sigmoid(torch.bmm(low, self.up)))

    def select(self, experts: Sequence[int]) -> FeatureGates:
        index = _index(experts)
        _, dim, rank = self.down.shape
        gates = FeatureGates(len(index), dim, rank)
        with torch.no_grad():
            gates.down.copy_(self.down[index])
            gates.up.copy_(self.up[index])
        return gates

    def extra_repr(self) -> str:
        experts, dim, rank = self.down.shape
        return f"experts={experts}, dim={dim}, rank={rank}"


class NormedExpertBank(nn.Module):
    """E experts whose every layer is ``linear -> ExpertNorm -> Swish`` (HoME's expert),
    optionally behind :class:`FeatureGates`.

    One single-layer :class:`ExpertBank` per layer keeps all experts fused; the loop is over
    layers. Shapes: [B, in] (shared) or [E, B, in] (per expert) -> [E, B, hidden[-1]].
    """

    def __init__(
        self,
        num_experts: int,
        in_dim: int,
        hidden: list[int],
        norm: NormKind,
        dropout: float = 0.0,
        feature_gate_rank: int = 0,
    ) -> None:
        super().__init__()
        self.num_experts, self.in_dim, self.hidden = num_experts, in_dim, list(hidden)
        self.norm_kind: NormKind = norm
        self.dropout_p = dropout
        self.feature_gates = (
            FeatureGates(num_experts, in_dim, feature_gate_rank) if feature_gate_rank else None
        )
        sizes = [in_dim, *hidden]
        self.layers = nn.ModuleList(
            ExpertBank(num_experts, fan_in, [fan_out], activate_last=False)
            for fan_in, fan_out in itertools.pairwise(sizes)
        )
        self.norms = nn.ModuleList(ExpertNorm(num_experts, width, norm) for width in hidden)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def out_dim(self) -> int:
        return self.hidden[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.feature_gates is not None:
            x = self.feature_gates(x)
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = self.dropout(F.silu(norm(layer(x))))
        return x

    def select(self, experts: Sequence[int]) -> NormedExpertBank:
        rank = self.feature_gates.down.shape[2] if self.feature_gates is not None else 0
        bank = NormedExpertBank(
            len(experts), self.in_dim, self.hidden, self.norm_kind, self.dropout_p, rank
        )
        if self.feature_gates is not None:
            bank.feature_gates = self.feature_gates.select(experts)
        layers = cast(list[ExpertBank], list(self.layers))
        norms = cast(list[ExpertNorm], list(self.norms))
        bank.layers = nn.ModuleList(layer.select(experts) for layer in layers)
        bank.norms = nn.ModuleList(norm.select(experts) for norm in norms)
        return bank.train(self.training)
