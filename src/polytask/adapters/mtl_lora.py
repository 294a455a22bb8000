"""MTL-LoRA (Yang et al. 2024): ``delta_t = A Lambda_t sum_i w_ti B_i`` on each layer.

A [in, r] is shared by every task, Lambda_t [r, r] is task t's own transform (starting as the
identity), and the n up-projections B_i [r, out] are shared, mixed per task by
``w_t = softmax(omega_t / temperature)``. The shared down-projection runs once on every row;
the task-specific transform and the task's mixed up-projection are batched products over the
rows grouped by task.
"""

from __future__ import annotations

import torch
from torch import nn

from polytask.adapters.base import ADAPTERS, Adapter, LayerShape, uniform_init
from polytask.adapters.options import MTLLoRAOptions
from polytask.adapters.routing import RowTasks


@ADAPTERS.register("mtl_lora")
class MTLLoRA(Adapter):
    """Parameters: down [M, in, r], transform [T, M, r, r], ups [M, n, r, out],
    mixing [T, M, n]."""

    Options = MTLLoRAOptions
    options: MTLLoRAOptions

    def __init__(
        self, shape: LayerShape, num_tasks: int, options: MTLLoRAOptions, shared: nn.ModuleDict
    ) -> None:
        super().__init__(shape, num_tasks, options, shared)
        rank, members = options.rank, shape.members
        self.scale = options.alpha / rank
        self.down = nn.Parameter(
            uniform_init(torch.empty(members, shape.in_dim, rank), shape.in_dim)
        )
        eye = torch.eye(rank).expand(num_tasks, members, rank, rank)
        self.transform = nn.Parameter(eye.clone())
        self.ups = nn.Parameter(torch.zeros(members, options.ups, rank, shape.out_dim))
        self.mixing = nn.Parameter(torch.zeros(num_tasks, members, options.ups))
        self.dropout = nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity()

    def task_ups(self) -> torch.Tensor:
        """Each task's mixed up-projection [T, M, r, out]."""
        weights = torch.softmax(self.mixing / self.options.temperature, dim=-1)
        return torch.einsum("tmn,mnro->tmro", weights, self.ups)

    def forward(self, x: torch.Tensor, y: torch.Tensor, rows: RowTasks) -> torch.Tensor:
        shared = self.dropout(x) @ self.down[:, None]  # [M, P, K, r]
        grouped = rows.group(shared)  # [T, M, S*K, r]
        update = (grouped @ rows.weights(self.transform)) @ rows.weights(self.task_ups())
        return torch.add(y, rows.ungroup(update, x.shape[2]), alpha=self.scale)

    def delta(self, task: int) -> torch.Tensor:
        return self.scale * (self.down @ self.transform[task] @ self.task_ups()[task])
