"""LoRA per task (Hu et al. 2021): task t's layer computes ``y + (alpha / r) x A_t B_t``.

A_t [in, r] starts like a linear layer, B_t [r, out] at zero, so training starts from the
backbone's outputs exactly. A mixed batch is grouped by task (:meth:`RowTasks.group`) and each
projection is one batched product over [T, M] (task, member) pairs.
"""

from __future__ import annotations

import torch
from torch import nn

from polytask.adapters.base import ADAPTERS, Adapter, LayerShape, uniform_init
from polytask.adapters.options import LoRAOptions
from polytask.adapters.routing import RowTasks


@ADAPTERS.register("lora")
class LoRA(Adapter):
    """Parameters: down [T, M, in, r], up [T, M, r, out]."""

    Options = LoRAOptions
    options: LoRAOptions

    def __init__(
        self, shape: LayerShape, num_tasks: int, options: LoRAOptions, shared: nn.ModuleDict
    ) -> None:
        super().__init__(shape, num_tasks, options, shared)
        rank, members = options.rank, shape.members
        self.scale = options.alpha / rank
        self.down = nn.Parameter(
            uniform_init(torch.empty(num_tasks, members, shape.in_dim, rank), shape.in_dim)
        )
        self.up = nn.Parameter(torch.zeros(num_tasks, members, rank, shape.out_dim))
        self.dropout = nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, y: torch.Tensor, rows: RowTasks) -> torch.Tensor:
        grouped = rows.group(self.dropout(x))  # [T, M, S*K, in]
        update = (grouped @ rows.weights(self.down)) @ rows.weights(self.up)  # [T, M, S*K, out]
        return torch.add(y, rows.ungroup(update, x.shape[2]), alpha=self.scale)

    def delta(self, task: int) -> torch.Tensor:
        return self.scale * (self.down[task] @ self.up[task])
