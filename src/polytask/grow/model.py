"""A trained model with new tasks added: the grown plan's network holding the old weights.

:func:`add_tasks_to_model` is the model-side inverse of slimming: the plan grows
(:func:`polytask.plan.grow.add_tasks`); every bank, the towers, and (where each task has its
own) the encoders get a new block beside the old ones, which are kept whole
(:mod:`polytask.nn.blocks`). :func:`old_entries` says which of the grown model's parameters
hold old weights: the ones ``expand`` keeps fixed.
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
    encoders = nn.ModuleList(old.encoders)
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


def old_entries(model: MultiTaskModel, grow: Grow) -> dict[str, torch.Tensor]:
    """Per parameter of ``grow(model)``: True where the entry is a copy of one of
    ``model``'s. Found by growing a copy whose parameters are all NaN: growth copies old
    entries and initialises new ones with finite values, so the NaNs mark the copies."""
    marked = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in marked.parameters():
            parameter.fill_(float("nan"))
    return {name: torch.isnan(p.detach()) for name, p in grow(marked).named_parameters()}
