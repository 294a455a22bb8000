"""Shared pieces of the adapter tests: a mixed batch of rows of several tasks, laid out as
an adapter model lays it out (task by task), and row-by-row references."""

from __future__ import annotations

import torch
from torch import nn

from polytask.adapters.base import ADAPTERS, Adapter, LayerShape
from polytask.adapters.options import ADAPTER_OPTIONS
from polytask.adapters.routing import RowTasks

TASKS = 3


def mixed_rows(rows: int = 11, seed: int = 0) -> RowTasks:
    """Rows of TASKS tasks in unequal numbers (one task has fewer rows: padding is used)."""
    generator = torch.Generator().manual_seed(seed)
    tasks = torch.randint(0, TASKS, (rows,), generator=generator).sort().values
    return RowTasks.of(tasks, TASKS)


def build(method: str, shape: LayerShape, seed: int = 0, **options: object) -> Adapter:
    """An adapter with every parameter random (trained-looking, not its zero start)."""
    torch.manual_seed(seed)
    declared = ADAPTER_OPTIONS.get(method).model_validate(options)
    adapter = ADAPTERS.get(method)(shape, TASKS, declared, nn.ModuleDict())
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_(0, 0.3)
    return adapter


def layer_io(shape: LayerShape, rows: int, tokens: int = 1, seed: int = 1):
    """A linear layer's input [1, P, K, in] and output [M, P, K, out] (M members)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, rows, tokens, shape.in_dim, generator=generator)
    y = torch.randn(shape.members, rows, tokens, shape.out_dim, generator=generator)
    return x, y
