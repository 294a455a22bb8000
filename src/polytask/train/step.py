"""One training step as a plain function of (model, batch, balancer, optimizer).

Kept free of trainer state so that a distributed wrapper or a custom loop can call it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from polytask.balance.base import Balancer, GradientSource, Need, StepContext
from polytask.errors import ConfigError, PolytaskError
from polytask.features import Features
from polytask.model import ModelOutput, MultiTaskModel
from polytask.nn.towers import Towers
from polytask.tasks import Task, labelled_rows, task_losses
from polytask.train.device import Placement
from polytask.train.distributed import World
from polytask.train.hooks import StepHooks

PARAMETER_NEEDS = frozenset({Need.GRAMIAN, Need.SHARED_GRADS})


def _skips_unlabelled(
    model: MultiTaskModel, balancer: Balancer, hooks: StepHooks | None, measuring: bool
) -> bool:
    """Whether the step may compute only the labelled (row, task) pairs: the model can
    (:attr:`MultiTaskModel.row_routable`) and nothing reads more than the losses (gradient
    balancers and diagnostics differentiate at the dense representation; a continual
    strategy's penalty may read any task's outputs on any row, as LwF does)."""
    return (
        getattr(model, "row_routable", False)
        and hooks is None
        and not measuring
        and balancer.needs <= {Need.LOSSES}
    )


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
    *,
    place: Placement | None = None,
    scaler: torch.amp.GradScaler | None = None,
    world: World | None = None,
    rows: int | None = None,
    sample_weights: dict[str, torch.Tensor] | None = None,
    hooks: StepHooks | None = None,
) -> StepResult:
    """One update. ``measure_gradients`` also forms the task-gradient Gramian at the shared
    representation (for diagnostics) when the balancer does not compute one itself.

    ``place`` runs the forward pass in its precision (the losses stay float32); ``scaler``
    (fp16) scales the gradients, never the loss values a balancer reads; ``world`` makes the
    step one rank's part of a data-parallel step (see :mod:`polytask.train.distributed`):
    ``features`` and ``labels`` are then this rank's rows of the global batch, of which
    ``rows`` count (default: all). ``sample_weights``: the batch's row weights of the tasks
    that have them (``data.weight``). ``hooks`` (a continual-learning strategy, fixed
    entries) act at the points :mod:`polytask.train.hooks` lists: more rows, a penalty,
    gradient surgery."""
    world = world or World()
    optimizer.zero_grad(set_to_none=True)
    if hooks is not None:
        rows_before = len(features)
        features, labels = hooks.batch(features, labels)
        if sample_weights and len(features) != rows_before:
            raise ConfigError(
                "data.weight: sample weights cannot be combined with a strategy that adds "
                "remembered rows to the batch (replay, A-GEM's memory)"
            )
        factors = hooks.task_weights(labels, tasks)
        if factors is not None:
            static_weights = static_weights * factors.to(static_weights)

    if model.routes_rows or _skips_unlabelled(model, balancer, hooks, measure_gradients):
        # each row runs as the tasks it has labels for, not all of them
        features = features.asking(labelled_rows(labels, tasks))

    def forward() -> ModelOutput:
        with place.autocast() if place is not None else contextlib.nullcontext():
            output = model(features)
        output.logits = [values.float() for values in output.logits]
        return output

    output = forward()
    local, present = task_losses(output.logits, labels, tasks, sample_weights)
    # the gradients' factors: per task, and for the auxiliary loss (a mean over rows)
    factor: torch.Tensor | None = None
    extra_factor: torch.Tensor | None = None
    values = local.detach()
    if world.distributed:
        counted = len(features) if rows is None else rows
        values, present, factor, extra_factor = world.global_losses(
            local, labels, tasks, counted, sample_weights
        )
    scale = scaler.scale(torch.ones((), device=local.device)) if scaler is not None else None
    if scale is not None:
        factor = scale if factor is None else factor * scale
        extra_factor = scale if extra_factor is None else extra_factor * scale
    losses = local if factor is None else _scaled_gradient(local, factor, values)
    extra = output.auxiliary_loss
    if hooks is not None:
        penalty = hooks.penalty(model, features, output)
        if penalty is not None:
            extra = penalty if extra is None else extra + penalty
    if extra is not None and extra_factor is not None:
        extra = _scaled_gradient(extra, extra_factor, extra.detach())
    wants_params = bool(balancer.needs & PARAMETER_NEEDS)
    context = StepContext(
        present=present,
        static_weights=static_weights,
        step=step,
        shared_params=model.shared_parameters() if wants_params else [],
        representation=output.representation,
        extra_loss=extra,
        recompute_losses=lambda: task_losses(forward().logits, labels, tasks, sample_weights)[0],
        # loss t is computed from output t alone (task_losses): with the model's separable
        # tower inputs, per-task gradients skip a T-batched pass through the towers, and
        # with the task parameters, exact mode skips a second full backward
        task_params=model.task_parameters() if wants_params else None,
        task_inputs=output.task_inputs,
        common_input=output.common_input,
        tower_first=output.tower_first,
        tower_weight=_first_tower_weight(model, output),
        finish_gramian=_gramian_finisher(world, scale),
        sum_over_processes=world.sum if world.distributed else None,
        gather_rows=world.gather_rows if world.distributed else None,
    )
    if measure_gradients and context.representation is not None:
        context.gramian(losses, "representation")  # cached: a balancer using it pays nothing
    weights = balancer.backward(losses, context)
    world.average_gradients([p for group in optimizer.param_groups for p in group["params"]])
    if hooks is not None:
        hooks.before_update(model)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if hooks is not None:
        hooks.after_update(model)
    gramian = next((v for k, v in context._cache.items() if k.startswith("gramian:")), None)
    return StepResult(losses.detach(), weights, present, gramian)


def _scaled_gradient(loss: torch.Tensor, factor: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A tensor whose value is ``value`` and whose gradient is ``factor`` times ``loss``'s:
    balancers read the loss values, backward passes get the scaled gradients."""
    return value + factor * (loss - loss.detach())


def _gramian_finisher(
    world: World, scale: torch.Tensor | None
) -> Callable[[torch.Tensor, GradientSource], torch.Tensor] | None:
    """Undo what the step did to the task gradients before a balancer reads their Gramian:
    fp16's loss scale, and the ranks' factor (``ranks`` times the global batch's gradient on
    each rank's rows), summing the ranks' Gramians of disjoint representation rows."""
    if scale is None and not world.distributed:
        return None

    def finish(gramian: torch.Tensor, source: GradientSource) -> torch.Tensor:
        if scale is not None:
            gramian = gramian / scale.to(gramian.dtype) ** 2
        if world.distributed:
            if source != "representation":
                raise PolytaskError(
                    "a Gramian of parameter gradients cannot be summed over processes; "
                    "use balance.options.mode: fast"
                )
            gramian = world.sum(gramian) / world.size**2
        return gramian

    return finish


def _first_tower_weight(model: MultiTaskModel, output: ModelOutput) -> torch.Tensor | None:
    """The towers' first-layer weight [T, D, width] when they read one common input."""
    if output.common_input is None or not isinstance(model.towers, Towers):
        return None
    return model.towers.first_layer.weights[0]
