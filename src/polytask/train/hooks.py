"""Hooks: what a continual-learning strategy (or any plugin) adds to the one training loop.

A strategy is a set of hooks on the training loop, not a trainer of its own (the plugin
structure of Avalanche). :func:`polytask.train.step.train_step` and the trainer call them at
fixed points::

    features, labels = hooks.batch(features, labels)        data: rows replayed from a buffer
    static weights *= hooks.task_weights(labels, tasks)      this step's weighting of the tasks
    output = model(features)
    objective = balanced task losses + auxiliary + hooks.penalty(model, features, output)
    backward                                                 (the balancer)
    hooks.before_update(model)          gradient surgery (A-GEM, GEM), fixed entries' gradient
    optimizer.step()
    hooks.after_update(model)           fixed entries restored, path integrals (SI)
    ...after each epoch: hooks.end_epoch(model, epoch)      (PackNet prunes here)
    ...once trained, with the selected weights: hooks.finish(model, folder)

Every method does nothing by default; :class:`HookChain` runs several in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from polytask.features import Features
from polytask.model import ModelOutput
from polytask.tasks import Task

Labels = dict[str, torch.Tensor]


class StepHooks:
    """The points of the training loop a plugin may act at (see the module docstring)."""

    def batch(self, features: Features, labels: Labels) -> tuple[Features, Labels]:
        """The rows this step trains on: the sampled batch, or more."""
        return features, labels

    def task_weights(self, labels: Labels, tasks: list[Task]) -> torch.Tensor | None:
        """Factors [T] on this step's task weights (``tasks`` in the model's order), or None
        (no change)."""
        return None

    def penalty(
        self, model: nn.Module, features: Features, output: ModelOutput
    ) -> torch.Tensor | None:
        """A term added to the objective (unweighted, beside the architecture's auxiliary
        loss), or None."""
        return None

    def before_update(self, model: nn.Module) -> None:
        """The step's gradient is in ``.grad``; the optimizer has not moved yet."""

    def after_update(self, model: nn.Module) -> None:
        """The optimizer has just moved the parameters."""

    def end_epoch(self, model: nn.Module, epoch: int) -> bool:
        """After an epoch's steps, before validation. True when the model was changed in a
        way that makes earlier epochs' weights no longer candidates for selection."""
        return False

    def finish(self, model: nn.Module, folder: Path) -> None:
        """Training is over and ``model`` holds the selected weights; ``folder`` is the run
        being built (files written there are published with it)."""


class HookChain(StepHooks):
    """Several hooks run in order (batches pass through each in turn; penalties add up)."""

    def __init__(self, hooks: Iterable[StepHooks]) -> None:
        self.hooks = list(hooks)

    def batch(self, features: Features, labels: Labels) -> tuple[Features, Labels]:
        for hook in self.hooks:
            features, labels = hook.batch(features, labels)
        return features, labels

    def task_weights(self, labels: Labels, tasks: list[Task]) -> torch.Tensor | None:
        total: torch.Tensor | None = None
        for hook in self.hooks:
            factors = hook.task_weights(labels, tasks)
            if factors is not None:
                total = factors if total is None else total * factors
        return total

    def penalty(
        self, model: nn.Module, features: Features, output: ModelOutput
    ) -> torch.Tensor | None:
        total: torch.Tensor | None = None
        for hook in self.hooks:
            term = hook.penalty(model, features, output)
            if term is not None:
                total = term if total is None else total + term
        return total

    def before_update(self, model: nn.Module) -> None:
        for hook in self.hooks:
            hook.before_update(model)

    def after_update(self, model: nn.Module) -> None:
        for hook in self.hooks:
            hook.after_update(model)

    def end_epoch(self, model: nn.Module, epoch: int) -> bool:
        changed = [hook.end_epoch(model, epoch) for hook in self.hooks]
        return any(changed)

    def finish(self, model: nn.Module, folder: Path) -> None:
        for hook in self.hooks:
            hook.finish(model, folder)
