"""One training step as a plain function of (model, batch, balancer, optimizer).

Kept free of trainer state so that a distributed wrapper or a custom loop can call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from polytask.balance.base import Balancer, Need, StepContext
from polytask.features import Features
from polytask.model import ModelOutput, MultiTaskModel
from polytask.nn.towers import Towers
from polytask.tasks import Task, task_losses
from polytask.train.hooks import StepHooks

PARAMETER_NEEDS = frozenset({Need.GRAMIAN, Need.SHARED_GRADS})


@dataclass
class StepResult:
    losses: torch.Tensor  # [T], detached
    weights: torch.Tensor  # [T], detached
    present: torch.Tensor  # [T] bool
    gramian: torch.Tensor | None = None  # [T, T] where this step computed one


def train_step(
    model: MultiTaskModel,
    features: Features,
    labels: dict[str, torch.Tensor],
    tasks: list[Task],
    balancer: Balancer,
    optimizer: torch.optim.Optimizer,
    static_weights: torch.Tensor,
    step: int,
    measure_gradients: bool = False,
    hooks: StepHooks | None = None,
) -> StepResult:
    """One update. ``measure_gradients`` also forms the task-gradient Gramian at the shared
    representation (for diagnostics) when the balancer does not compute one itself.
    ``hooks`` (a continual-learning strategy, fixed entries) act at the points
    :mod:`polytask.train.hooks` lists: more rows, a penalty, gradient surgery."""
    optimizer.zero_grad(set_to_none=True)
    if hooks is not None:
        features, labels = hooks.batch(features, labels)
    output = model(features)
    losses, present = task_losses(output.logits, labels, tasks)
    extra = output.auxiliary_loss
    if hooks is not None:
        penalty = hooks.penalty(model, features, output)
        if penalty is not None:
            extra = penalty if extra is None else extra + penalty
    wants_params = bool(balancer.needs & PARAMETER_NEEDS)
    context = StepContext(
        present=present,
        static_weights=static_weights,
        step=step,
        shared_params=model.shared_parameters() if wants_params else [],
        representation=output.representation,
        extra_loss=extra,
        recompute_losses=lambda: task_losses(model(features).logits, labels, tasks)[0],
        # loss t is computed from output t alone (task_losses): with the model's separable
        # tower inputs, per-task gradients skip a T-batched pass through the towers, and
        # with the task parameters, exact mode skips a second full backward
        task_params=model.task_parameters() if wants_params else None,
        task_inputs=output.task_inputs,
        common_input=output.common_input,
        tower_first=output.tower_first,
        tower_weight=_first_tower_weight(model, output),
    )
    if measure_gradients and context.representation is not None:
        context.gramian(losses, "representation")  # cached: a balancer using it pays nothing
    weights = balancer.backward(losses, context)
    if hooks is not None:
        hooks.before_update(model)
    optimizer.step()
    if hooks is not None:
        hooks.after_update(model)
    gramian = next((v for k, v in context._cache.items() if k.startswith("gramian:")), None)
    return StepResult(losses.detach(), weights, present, gramian)


def _first_tower_weight(model: MultiTaskModel, output: ModelOutput) -> torch.Tensor | None:
    """The towers' first-layer weight [T, D, width] when they read one common input."""
    if output.common_input is None or not isinstance(model.towers, Towers):
        return None
    return model.towers.first_layer.weights[0]
