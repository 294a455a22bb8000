"""AITM (Xi et al., KDD 2021): adaptive information transfer along a conversion funnel.

Every task has its own bottom (fused) and tower. Along the chain, task t's tower reads an
attention-weighted mix of its own tower representation q_t and the information p_{t-1}
transferred from the previous step, p_{t-1} = relu(z_{t-1} W_t + b_t) where z_{t-1} is what
the previous task's output layer read (z = q for the first task). The attention (the paper's
AIT module) scores each of the two vectors u by <h1(u), h2(u)> / sqrt(d), softmaxes over the
two, and returns sum_u w_u h3(u); h1, h2, h3 are linear maps without bias, shared by all steps
as in the authors' code.

The behavioural expectation calibrator is the auxiliary loss
``calibration_weight * mean_rows(sum_t relu(p_t - p_{t-1}))`` over consecutive chain pairs:
it penalises a later step (conversion) predicted as more likely than an earlier one (click).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from polytask.arch.base import ARCHS, SharingArch
from polytask.arch.esmm import ChainOptions, check_binary_heads, resolve_chain
from polytask.config import ModelSpec
from polytask.nn.experts import ExpertBank


class AITMOptions(ChainOptions):
    calibration_weight: float = Field(
        0.6, ge=0.0, description="weight of the calibrator relu(p_t - p_{t-1}) (0 disables it)"
    )


class InfoAttention(nn.Module):
    """The AIT module over two vectors: the transferred information and the task's own.

    Shapes: p_prev [B, d], q [B, d] -> z [B, d].
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        # h1, h2, h3 side by side: one product gives all three projections of both inputs
        self.projection = nn.Parameter(torch.empty(dim, 3 * dim))
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.projection, -bound, bound)
        self.last_weights: torch.Tensor | None = None

    def forward(self, p_prev: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        pair = torch.stack([p_prev, q], dim=1)  # [B, 2, d]
        query, key, value = (pair @ self.projection).split(self.dim, dim=-1)
        scores = (query * key).sum(-1) / math.sqrt(self.dim)  # [B, 2]
        weights = torch.softmax(scores, dim=1)
        self.last_weights = weights.detach()  # [B, 2]: (transferred, own)
        return (weights.unsqueeze(-1) * value).sum(1)


@ARCHS.register("aitm")
class AITM(SharingArch):
    """Per-task bottoms; towers with information transfer along ``chain``; calibrator loss.

    Tasks outside the chain get plain towers. The transfer is a recurrence (z_t needs z_{t-1}),
    so the chain is walked step by step; bottoms, tower layers and output layers stay fused.

    Shapes: x [B, in_dim] -> representation [T, B, hidden[-1]]; heads -> T logits [B, out_t].
    """

    Options = AITMOptions

    def __init__(self, in_dim: int, num_tasks: int, spec: ModelSpec) -> None:
        super().__init__(in_dim, num_tasks, spec)
        options: AITMOptions = self.options  # type: ignore[assignment]
        self.chain = resolve_chain(spec.arch, options, num_tasks)
        self.arch_name = spec.arch
        self.calibration_weight = options.calibration_weight
        self.bottoms = ExpertBank(num_tasks, in_dim, spec.hidden, dropout=spec.dropout)
        # the width the towers' output layer reads: last tower layer, or the bottom if none
        dim = spec.tower_hidden[-1] if spec.tower_hidden else spec.hidden[-1]
        # one transfer layer per step of the chain: p_{t-1} = relu(z_{t-1} W_t + b_t)
        steps = len(self.chain) - 1
        self.transfer_weight = nn.Parameter(torch.empty(steps, dim, dim))
        self.transfer_bias = nn.Parameter(torch.empty(steps, dim))
        self.transfer_dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.attention = InfoAttention(dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Transfer layers initialised like ``nn.Linear(dim, dim)``."""
        bound = 1.0 / math.sqrt(self.transfer_weight.shape[1])
        nn.init.uniform_(self.transfer_weight, -bound, bound)
        nn.init.uniform_(self.transfer_bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottoms(x)  # [T, B, out]

    def heads(self, towers: nn.Module, representation: torch.Tensor) -> list[torch.Tensor]:
        """Tower layers -> information transfer along the chain -> output layers."""
        check_binary_heads(self.arch_name, self.chain, towers.out_dims)
        own = towers.hidden(representation) if towers.hidden is not None else representation
        mixed = self.transfer_along_chain(own)  # [T, B, d]
        logits = towers.output(mixed)  # [T, B, max_out]
        outputs = [logits[t, :, :width] for t, width in enumerate(towers.out_dims)]
        self.auxiliary_loss = self.calibration(outputs) if self.training else None
        return outputs

    def transfer_along_chain(self, own: torch.Tensor) -> torch.Tensor:
        """[T, B, d] tower representations q -> [T, B, d] output-layer inputs z."""
        rows = list(own.unbind(0))
        previous = rows[self.chain[0]]
        for step, task in enumerate(self.chain[1:]):
            transferred = self._transfer_step(step, previous)
            previous = self.attention(transferred, rows[task])
            rows[task] = previous
        return torch.stack(rows)

    def _transfer_step(self, step: int, z_prev: torch.Tensor) -> torch.Tensor:
        """p = relu(z_prev W_step + b_step): [B, d] -> [B, d]."""
        linear = torch.addmm(self.transfer_bias[step], z_prev, self.transfer_weight[step])
        return self.transfer_dropout(torch.relu(linear))

    def calibration(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """calibration_weight * mean over rows of sum_t relu(p_t - p_{t-1}), chain pairs."""
        probs = torch.sigmoid(torch.stack([outputs[t][:, 0] for t in self.chain]))  # [K, B]
        excess = torch.relu(probs[1:] - probs[:-1])  # [K-1, B]
        return self.calibration_weight * excess.sum(0).mean()

    def extra_repr(self) -> str:
        return f"chain={self.chain}, calibration_weight={self.calibration_weight}"
