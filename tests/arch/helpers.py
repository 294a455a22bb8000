"""Building one architecture's network (its plan, run by the one executor) for tests."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from polytask.arch import ARCHS
from polytask.config import ModelSpec
from polytask.nn.executor import PlanNetwork
from polytask.plan import Plan


def plan_of(name: str, num_tasks: int, **model_fields: Any) -> Plan:
    """The plan architecture ``name`` writes for ``num_tasks`` tasks and these ``model``
    fields (hidden, num_experts, options, ...)."""
    return ARCHS.get(name).plan(num_tasks, ModelSpec(arch=name, **model_fields))


def network(name: str, in_dim: int, num_tasks: int, **model_fields: Any) -> PlanNetwork:
    """Architecture ``name``'s network over an encoder output of width ``in_dim``; run it
    with ``net(x).tasks``."""
    return PlanNetwork(plan_of(name, num_tasks, **model_fields), in_dim)


def tensor_attributes(module: nn.Module) -> list[str]:
    """Tensors kept as plain attributes (not parameters or buffers) anywhere in ``module``:
    what a forward pass would leave behind on the modules."""
    return [
        f"{prefix or '<root>'}.{name}"
        for prefix, sub in module.named_modules()
        for name, value in vars(sub).items()
        if isinstance(value, torch.Tensor)
    ]
