"""Averaged gradient episodic memory (A-GEM; Chaudhry, Ranzato, Rohrbach & Elhoseiny, ICLR
2019).

Each task keeps an episodic memory of ``rows_per_task`` rows (a reservoir). At every step a
reference gradient g_ref is computed on ``sample`` rows drawn from the old tasks' memories;
if the step's gradient g would increase their loss (``g . g_ref < 0``) it is replaced by its
projection

    g - (g . g_ref / g_ref . g_ref) g_ref,

which has ``g . g_ref = 0`` and is the closest vector to g that does not increase the
memories' loss to first order.

``project: stepped`` writes the projection only where the step's own gradient is non-zero
(the old tasks' towers get none and take no step), as Avalanche's A-GEM and GEM plugins
write it only into the parameters that have a gradient; the vector written then no longer
has ``g . g_ref = 0`` exactly. The default, ``all``, is the paper's projection over every
trained parameter.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from polytask.grow.data import Rows
from polytask.grow.strategies._buffer import MemoryOptions, TaskBuffers
from polytask.grow.strategies._gradients import flat_grad, loss_grad, where_stepped, write_grad
from polytask.grow.strategies.base import (
    STRATEGIES,
    ExperienceContext,
    Strategy,
    StrategyOptions,
    Tensors,
    old_data_needed,
    rows_loss,
)
from polytask.grow.strategies.replay import pooled
from polytask.model import MultiTaskModel
from polytask.tasks import Task
from polytask.train.hooks import StepHooks

MEMORY = "memory."


class ProjectionOptions(MemoryOptions):
    """Options of the strategies that project the step's gradient (A-GEM, GEM)."""

    project: Literal["all", "stepped"] = Field(
        "all",
        description="all: the projected gradient over every trained parameter (the papers'); "
        "stepped: written only where the step's own gradient is non-zero, the rest (old "
        "tasks' towers) taking no step, as Avalanche's plugins do",
    )


class AGEMOptions(ProjectionOptions):
    sample: int = Field(256, ge=1, description="memory rows per reference gradient")


def agem_project(gradient: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``gradient`` projected as A-GEM does (unchanged when it agrees with ``reference``)."""
    dot = torch.dot(gradient, reference)
    norm = torch.dot(reference, reference)
    if dot >= 0 or norm <= 0:
        return gradient
    return gradient - (dot / norm) * reference


class AveragedProjection(StepHooks):
    def __init__(
        self, memory: Rows, tasks: list[Task], options: AGEMOptions, generator: torch.Generator
    ) -> None:
        self.memory, self.tasks, self.generator = memory, tasks, generator
        self.sample, self.project = options.sample, options.project
        self.projected = 0

    def before_update(self, model: nn.Module) -> None:
        assert isinstance(model, MultiTaskModel)
        parameters = [p for p in model.parameters() if p.requires_grad]
        count = min(self.sample, len(self.memory))
        index = torch.randperm(len(self.memory), generator=self.generator)[:count]
        reference = loss_grad(rows_loss(model, self.memory.take(index), self.tasks), parameters)
        gradient = flat_grad(parameters)
        projected = agem_project(gradient, reference)
        if projected is not gradient:
            if self.project == "stepped":
                projected = where_stepped(projected, gradient)
            write_grad(parameters, projected)
            self.projected += 1


@STRATEGIES.register("agem")
class AGEM(Strategy):
    """A-GEM: project the gradient when it conflicts with the old tasks' memory gradient."""

    Options: ClassVar[type[StrategyOptions]] = AGEMOptions
    summary = "A-GEM: project conflicting gradients against an episodic memory's"

    def __init__(self, options: StrategyOptions) -> None:
        super().__init__(options)
        assert isinstance(options, MemoryOptions)
        self.buffers = TaskBuffers(options.rows_per_task, MEMORY)

    def fill(self, context: ExperienceContext) -> list[Task]:
        """Memories for every old task (from the old rows where none is kept yet)."""
        old = context.old_tasks
        missing = [t.name for t in old if t.name not in self.buffers.buffers]
        if missing:
            if context.old is None:
                raise old_data_needed(self.registry_name, "rows (for its episodic memory)")
            self.buffers.offer(context.old, missing, context.generator)
        return old

    def begin(self, context: ExperienceContext) -> StepHooks | None:
        assert isinstance(self.options, AGEMOptions)
        old = self.fill(context)
        memory = pooled(self.buffers, [task.name for task in old])
        if memory is None:
            return None
        return AveragedProjection(memory, old, self.options, context.generator)

    def end(self, model: MultiTaskModel, context: ExperienceContext) -> None:
        self.buffers.offer(context.rows, context.new, context.generator)

    def state(self) -> Tensors:
        return self.buffers.state()

    def load_state(self, state: Tensors, meta: dict[str, str]) -> None:
        self.buffers.load_state(state)
