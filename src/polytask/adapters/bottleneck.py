"""Bottleneck adapters per task (Houlsby et al. 2019) and AdapterFusion (Pfeiffer et al. 2021).

On a target layer's output h, task t's adapter adds ``a_t(h) = relu(h D_t + d_t) U_t + u_t``
(U_t starts at zero: training starts from the backbone's outputs). With ``compose: fusion``,
task t instead adds an attention-weighted sum over every task's adapter output:
``sum_j softmax_j(<h Q_t, a_j(h) K_t>) a_j(h) V_t``, Q_t, K_t, V_t task t's own (V_t starts
as the identity, so fusion starts as the mean of the adapters). AdapterFusion's two stages are
two runs: train ``bottleneck``, then ``compose: fusion`` with that run as the backbone, whose
adapters then load and stay fixed while the fusion layers learn.

The adapter does not depend on x linearly, so it does not fold into the weights.
"""

from __future__ import annotations

import torch
from torch import nn

from polytask.adapters.base import ADAPTERS, Adapter, LayerShape, uniform_init
from polytask.adapters.options import BottleneckOptions
from polytask.adapters.routing import RowTasks


@ADAPTERS.register("bottleneck")
class Bottleneck(Adapter):
    """Parameters: down [T, M, out, b], down_bias [T, M, 1, b], up [T, M, b, out], up_bias
    [T, M, 1, out]; with fusion also query, key, value [T, M, out, out]."""

    Options = BottleneckOptions
    options: BottleneckOptions

    def __init__(
        self,
        shape: LayerShape,
        num_tasks: int,
        options: BottleneckOptions,
        shared: nn.ModuleDict,
    ) -> None:
        super().__init__(shape, num_tasks, options, shared)
        width, size, members = shape.out_dim, options.size, shape.members
        self.down = nn.Parameter(uniform_init(torch.empty(num_tasks, members, width, size), width))
        self.down_bias = nn.Parameter(torch.zeros(num_tasks, members, 1, size))
        self.up = nn.Parameter(torch.zeros(num_tasks, members, size, width))
        self.up_bias = nn.Parameter(torch.zeros(num_tasks, members, 1, width))
        self.fusion = options.compose == "fusion"
        if self.fusion:
            square = (num_tasks, members, width, width)
            self.query = nn.Parameter(0.01 * torch.randn(square))
            self.key = nn.Parameter(0.01 * torch.randn(square))
            self.value = nn.Parameter(torch.eye(width).expand(square).clone())

    def forward(self, x: torch.Tensor, y: torch.Tensor, rows: RowTasks) -> torch.Tensor:
        del x  # a bottleneck adapter reads the layer's output
        grouped = rows.group(y)  # [T, M, S*K, out]
        if self.fusion:
            update = self._fused(grouped, rows)
        else:
            down, up = rows.weights(self.down), rows.weights(self.up)
            hidden = torch.relu(grouped @ down + rows.weights(self.down_bias))
            update = hidden @ up + rows.weights(self.up_bias)
        return y + rows.ungroup(update, y.shape[2])

    def _fused(self, grouped: torch.Tensor, rows: RowTasks) -> torch.Tensor:
        """Every adapter j on every task t's rows, mixed by task t's attention."""
        every = grouped[:, None]  # [G, 1, M, S*K, out]: each task's rows, for every adapter
        hidden = torch.relu(every @ self.down[None] + self.down_bias[None])
        outputs = hidden @ self.up[None] + self.up_bias[None]  # [T, J, M, S*K, out]
        query = grouped @ rows.weights(self.query)  # [G, M, S*K, out]
        keys = outputs @ rows.weights(self.key)[:, None]  # [G, J, M, S*K, out]
        scores = (keys * query[:, None]).sum(-1)  # [T, J, M, S*K]
        attention = torch.softmax(scores, dim=1)
        values = outputs @ rows.weights(self.value)[:, None]
        return (attention[..., None] * values).sum(1)
