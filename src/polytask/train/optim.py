"""Optimizers and learning-rate schedules named in the ``train`` section."""

from __future__ import annotations

from typing import Any

import torch

from polytask.config import TrainSpec


def build_optimizer(params: list[torch.nn.Parameter], spec: TrainSpec) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
    # foreach: one multi-tensor kernel per update instead of a Python loop over parameters
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, foreach=True)
    return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay, foreach=True)


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: TrainSpec
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per epoch."""
    schedule = spec.schedule
    if schedule.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs)
    if schedule.name == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=schedule.step_size, gamma=schedule.gamma
        )
    if schedule.name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=schedule.gamma)
    return None


ParameterState = dict[str, dict[str, Any]]


def parameter_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> ParameterState:
    """The optimizer's per-parameter state (Adam's moments and step count, SGD's momentum) by
    the model's parameter names, copied: what a later optimizer over a grown copy of the
    model can start from (:func:`load_parameter_state`)."""
    state: ParameterState = {}
    for name, parameter in model.named_parameters():
        entry = optimizer.state.get(parameter)
        if entry:
            state[name] = {key: _copied(value) for key, value in entry.items()}
    return state


def load_parameter_state(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module, state: ParameterState
) -> list[str]:
    """Give each of ``model``'s optimised parameters named in ``state`` that state, before
    the first step; a parameter whose shape changed keeps a fresh state. Returns the names
    loaded."""
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    loaded = []
    for name, parameter in model.named_parameters():
        entry = state.get(name)
        if entry is None or id(parameter) not in optimised:
            continue
        shapes = [v.shape for v in entry.values() if torch.is_tensor(v) and v.dim() > 0]
        if any(shape != parameter.shape for shape in shapes):
            continue
        # tensors shaped like the parameter live on its device; scalars (Adam's step) stay
        # where the optimizer keeps them
        optimizer.state[parameter] = {
            key: _copied(value).to(parameter.device)
            if torch.is_tensor(value) and value.dim() > 0
            else _copied(value)
            for key, value in entry.items()
        }
        loaded.append(name)
    return loaded


def _copied(value: Any) -> Any:
    return value.detach().clone() if torch.is_tensor(value) else value
