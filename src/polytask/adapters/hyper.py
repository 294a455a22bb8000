"""Hypernetwork-generated adapters (HyperFormer++, Mahabadi et al. 2021).

Every task has an embedding z_t and every adapted layer (each member of a bank) one of its
own, l; a task projector shared by all layers maps [z_t, l] to a source embedding s, and one
generator per layer width turns s into a bottleneck adapter's weights (D, d, U, u) for that
task and layer, applied to the layer's output h as ``h + relu(h D + d) U + u``. The parameters
shared by all layers live in the model's shared modules, so tasks and layers share one
hypernetwork; only the embeddings are per task and per layer. The up-projection's generator
starts at zero, so training starts from the backbone's outputs.

The generated adapter is nonlinear in h: it does not fold into the weights.
"""

from __future__ import annotations

import torch
from torch import nn

from polytask.adapters.base import ADAPTERS, Adapter, LayerShape
from polytask.adapters.options import HyperOptions
from polytask.adapters.routing import RowTasks


class _Generator(nn.Module):
    """Source embedding [.., s] -> one bottleneck adapter of a layer width."""

    def __init__(self, source: int, width: int, size: int) -> None:
        super().__init__()
        self.width, self.size = width, size
        self.down = nn.Linear(source, width * size + size)
        self.up = nn.Linear(source, size * width + width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(
        self, source: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """[T, M, s] -> D [T, M, w, b], d [T, M, 1, b], U [T, M, b, w], u [T, M, 1, w]."""
        w, b = self.width, self.size
        down, up = self.down(source), self.up(source)
        lead = source.shape[:-1]
        return (
            down[..., : w * b].reshape(*lead, w, b),
            down[..., w * b :].reshape(*lead, 1, b),
            up[..., : b * w].reshape(*lead, b, w),
            up[..., b * w :].reshape(*lead, 1, w),
        )


@ADAPTERS.register("hyper")
class Hyper(Adapter):
    """Own parameters: the layer embedding [M, layer_dim]. Shared (``shared``): the task
    embeddings [T, task_dim], the task projector, a generator per layer width."""

    Options = HyperOptions
    options: HyperOptions
    _shared: nn.ModuleDict
    _key: str

    def __init__(
        self, shape: LayerShape, num_tasks: int, options: HyperOptions, shared: nn.ModuleDict
    ) -> None:
        super().__init__(shape, num_tasks, options, shared)
        source = options.hidden
        if "hyper_tasks" not in shared:
            tasks = nn.Embedding(num_tasks, options.task_dim)
            nn.init.normal_(tasks.weight, std=0.1)
            shared["hyper_tasks"] = tasks
            shared["hyper_projector"] = nn.Sequential(
                nn.Linear(options.task_dim + options.layer_dim, options.hidden),
                nn.ReLU(),
                nn.Linear(options.hidden, source),
            )
        key = f"hyper_width_{shape.out_dim}"
        if key not in shared:
            shared[key] = _Generator(source, shape.out_dim, options.size)
        self.layer = nn.Parameter(0.1 * torch.randn(shape.members, options.layer_dim))
        # the shared modules are the model's; kept out of this module's registered children
        object.__setattr__(self, "_shared", shared)
        object.__setattr__(self, "_key", key)

    def generated(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This layer's adapter for every task: D [T, M, w, b], d, U [T, M, b, w], u."""
        shared = self._shared
        embedding = shared["hyper_tasks"]
        assert isinstance(embedding, nn.Embedding)
        tasks = embedding.weight  # [T, task_dim]
        num_tasks, members = tasks.shape[0], self.layer.shape[0]
        pairs = torch.cat(
            [
                tasks[:, None].expand(num_tasks, members, tasks.shape[1]),
                self.layer[None].expand(num_tasks, members, self.layer.shape[1]),
            ],
            dim=-1,
        )
        weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] = shared[self._key](
            shared["hyper_projector"](pairs)
        )
        return weights

    def forward(self, x: torch.Tensor, y: torch.Tensor, rows: RowTasks) -> torch.Tensor:
        del x  # the generated adapter reads the layer's output
        down, down_bias, up, up_bias = (rows.weights(w) for w in self.generated())
        grouped = rows.group(y)
        update = torch.relu(grouped @ down + down_bias) @ up + up_bias
        return y + rows.ungroup(update, y.shape[2])
