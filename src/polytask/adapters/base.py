"""What every adapter method is: a module that edits one linear layer's output per row's task.

An adapter sits on a target layer (:mod:`polytask.adapters.layers`) of shape
:class:`LayerShape`. Its ``forward`` receives the layer's input ``x`` [M, P, K, in] and output
``y`` [M, P, K, out] (M members: 1 for an ``nn.Linear``, E for a bank of E experts, where ``x``
may have M = 1 and be shared; P rows; K tokens per row, 1 for tabular rows) and the rows' tasks
(:class:`~polytask.adapters.routing.RowTasks`), and returns the new output. Methods whose
update is a fixed matrix per task also give it (:meth:`Adapter.delta`), which folds the adapter
into the backbone for serving one task and lets the merge methods combine tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from polytask.adapters.options import AdapterOptions
from polytask.adapters.routing import RowTasks
from polytask.registry import Registry


@dataclass(frozen=True)
class LayerShape:
    """A target layer: ``members`` parallel [in_dim -> out_dim] linear maps."""

    in_dim: int
    out_dim: int
    members: int = 1


class Adapter(nn.Module):
    """Base class: subclasses declare ``Options`` and implement ``forward`` (and ``delta``
    when the update is linear and fixed per task)."""

    registry_name: ClassVar[str]
    Options: ClassVar[type[AdapterOptions]]

    def __init__(
        self, shape: LayerShape, num_tasks: int, options: AdapterOptions, shared: nn.ModuleDict
    ) -> None:
        """``shared``: the model's modules that every adapter of the method may use (a
        hypernetwork); a method creates its entries on first use."""
        super().__init__()
        self.shape = shape
        self.num_tasks = num_tasks
        self.options = options

    def forward(self, x: torch.Tensor, y: torch.Tensor, rows: RowTasks) -> torch.Tensor:
        raise NotImplementedError

    def delta(self, task: int) -> torch.Tensor | None:
        """Task ``task``'s weight update [M, in, out] (the expert banks' layout), or None
        when the method's update depends on the input (routers per token, nonlinear
        adapters), so it cannot be folded into the weights."""
        return None

    def extra_repr(self) -> str:
        s = self.shape
        return f"in={s.in_dim}, out={s.out_dim}, members={s.members}, tasks={self.num_tasks}"


def _load_methods() -> None:
    from polytask.adapters import bottleneck, hyper, lora, lora_moe, mtl_lora  # noqa: F401


ADAPTERS: Registry[Adapter] = Registry("adapter method", load=_load_methods)


def uniform_init(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """``nn.Linear``'s default initialisation for a weight reading ``fan_in`` inputs (what
    LoRA's A starts from, as in the reference implementation)."""
    bound = 1.0 / fan_in**0.5
    return nn.init.uniform_(tensor, -bound, bound)
