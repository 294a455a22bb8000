"""A trained model with new tasks added: the grown plan's network holding the old weights.

:func:`add_tasks_to_model` is the model-side inverse of slimming: the plan grows
(:func:`polytask.plan.grow.add_tasks`); every bank, the towers, and (where each task has its
own) the encoders get a new block beside the old ones, which are kept whole
(:mod:`polytask.nn.blocks`). :func:`origins` says which of the grown model's parameters hold
old weights, and under which name: the ones ``expand`` keeps fixed, and the names
strategies' state (Fisher diagonals, anchors) is renamed through.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from polytask.config import ModelSpec
from polytask.model import MultiTaskModel
from polytask.nn.blocks import build_towers, load_first_blocks
from polytask.plan.schema import Plan

Grow = Callable[[MultiTaskModel], MultiTaskModel]


def add_tasks_to_model(
    model: MultiTaskModel,
    spec: ModelSpec,
    plan: Plan,
    out_dims: list[int],
    names: list[str],
    make_encoder: Callable[[], nn.Module],
) -> MultiTaskModel:
    """``model`` (built from ``spec``) with tasks ``names`` (``out_dims`` outputs each) added
    as ``plan``, its plan grown, says. The result shares no module with ``model``."""
    old = copy.deepcopy(model)
    encoders = nn.ModuleList(list(old.encoders))
    if plan.encoders == "per_task":
        for _ in names:
            encoders.append(make_encoder())
    network = old.arch.grow(plan)
    dims = [*old.towers.out_dims, *out_dims]
    towers = build_towers(
        network.out_dim, spec.tower_hidden, dims, spec.dropout, plan.tower_blocks, plan.task_gates
    )
    load_first_blocks(towers, old.towers)
    grown = MultiTaskModel(encoders, network, towers, [*old.task_names, *names], old.heads)
    return grown.train(model.training)


def origins(model: MultiTaskModel, grow: Grow) -> dict[str, str]:
    """For each parameter of ``grow(model)`` that holds one of ``model``'s parameters whole,
    that parameter's name in ``model``. Found by growing a copy whose parameter number i is
    filled with the marker ``-(i + 1) * 1e6`` (growth copies old tensors and initialises new
    ones with values far smaller), then matching the markers."""
    marked = copy.deepcopy(model)
    names = [name for name, _ in marked.named_parameters()]
    with torch.no_grad():
        for number, parameter in enumerate(marked.parameters()):
            parameter.fill_(_marker(number))
    found = {}
    for name, parameter in grow(marked).named_parameters():
        value = float(parameter.detach().reshape(-1)[0]) if parameter.numel() else 0.0
        number = round(-value / 1e6) - 1
        if 0 <= number < len(names) and bool((parameter == _marker(number)).all()):
            found[name] = names[number]
    return found


def _marker(number: int) -> float:
    return -(number + 1) * 1e6
