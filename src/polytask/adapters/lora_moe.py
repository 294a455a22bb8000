"""A mixture of LoRA experts on each layer (MoLE, Wu et al. 2024; SMoRA-style routing):
``y + (alpha / r) sum_e g_e x A_e B_e``, the experts shared by every task.

The router is per task (a learnt softmax over experts per task: the mixture, and so the
update, is fixed per task and folds into the weights) or per token (a softmax over ``x W_r``
plus a per-task bias, so rows of one task may use different experts). ``top_k`` keeps the k
largest weights, renormalised. The load-balancing loss is the Switch Transformer's
``E * sum_e f_e p_e`` (f: share of rows whose largest weight is expert e; p: mean weight),
which is 1 for a uniform router and E when one expert takes everything.

All experts' down-projections are one [in, E*r] product (r is small); the weights then scale
each expert's r columns before one [E*r, out] up-projection, so no row is gathered.
"""

from __future__ import annotations

import torch
from torch import nn

from polytask.adapters.base import ADAPTERS, Adapter, LayerShape, uniform_init
from polytask.adapters.options import LoRAMoEOptions
from polytask.adapters.routing import RowTasks


@ADAPTERS.register("lora_moe")
class LoRAMoE(Adapter):
    """Parameters: down [M, in, E*r], up [M, E*r, out]; task_logits [T, M, E]; for the
    per-token router also router [M, in, E]."""

    Options = LoRAMoEOptions
    options: LoRAMoEOptions

    def __init__(
        self, shape: LayerShape, num_tasks: int, options: LoRAMoEOptions, shared: nn.ModuleDict
    ) -> None:
        super().__init__(shape, num_tasks, options, shared)
        rank, experts, members = options.rank, options.experts, shape.members
        self.scale = options.alpha / rank
        self.down = nn.Parameter(
            uniform_init(torch.empty(members, shape.in_dim, experts * rank), shape.in_dim)
        )
        self.up = nn.Parameter(torch.zeros(members, experts * rank, shape.out_dim))
        # small random logits: equal ones would give every expert the same gradient forever
        self.task_logits = nn.Parameter(0.01 * torch.randn(num_tasks, members, experts))
        self.router = (
            nn.Parameter(torch.zeros(members, shape.in_dim, experts))
            if options.router == "token"
            else None
        )
        self.dropout = nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity()

    def weights(self, x: torch.Tensor, rows: RowTasks) -> torch.Tensor:
        """Each row's (and token's) expert weights [M, P, K, E]."""
        logits = rows.per_row(self.task_logits).transpose(0, 1)[:, :, None]  # [M, P, 1, E]
        if self.router is not None:
            logits = logits + x @ self.router[:, None]  # [M, P, K, E]
        return self._top_k(torch.softmax(logits, dim=-1))

    def _top_k(self, weights: torch.Tensor) -> torch.Tensor:
        k = self.options.top_k
        if k is None or k == weights.shape[-1]:
            return weights
        kept, index = weights.topk(k, dim=-1)
        sparse = torch.zeros_like(weights).scatter(-1, index, kept)
        return sparse / sparse.sum(-1, keepdim=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor, rows: RowTasks) -> torch.Tensor:
        gates = self.weights(x, rows)  # [M|1, P, K, E]
        inner = self.dropout(x) @ self.down[:, None]  # [M, P, K, E*r]
        experts, rank = self.options.experts, self.options.rank
        mixed = inner.unflatten(-1, (experts, rank)) * gates[..., None]
        update = mixed.flatten(-2) @ self.up[:, None]  # [M, P, K, out]
        if self.training and self.options.balance_weight > 0:
            rows.auxiliary.append(self.options.balance_weight * self.balance_loss(gates))
        return torch.add(y, update, alpha=self.scale)

    def balance_loss(self, gates: torch.Tensor) -> torch.Tensor:
        """Switch Transformer's load-balancing loss over every row and token: 1 when uniform."""
        flat = gates.reshape(-1, gates.shape[-1])
        share = torch.bincount(flat.argmax(-1), minlength=flat.shape[-1]).to(flat) / len(flat)
        return flat.shape[-1] * (share * flat.mean(0)).sum()

    def delta(self, task: int) -> torch.Tensor | None:
        if self.router is not None:
            return None
        gates = self._top_k(torch.softmax(self.task_logits[task], dim=-1))  # [M, E]
        experts, rank = self.options.experts, self.options.rank
        scaled = self.down.unflatten(-1, (experts, rank)) * gates[:, None, :, None]
        return self.scale * (scaled.flatten(-2) @ self.up)
