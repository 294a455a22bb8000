"""Experience replay with a bounded buffer per task.

Each task keeps at most ``rows_per_task`` of its training rows, a uniform sample kept by
reservoir sampling (:mod:`polytask.grow.strategies._buffer`). While a later experience
trains, every batch of new rows gets ``batch`` rows drawn uniformly from the buffers of the
old tasks appended, each labelled for its own task only; the old tasks' losses then see old
rows again.

``weigh`` says how the joint batch's tasks count. ``tasks`` (the default): as in any
multi-task step, each task's mean loss once, so the old tasks together weigh (T - 1) / T.
``rows``: the mean loss over the joint batch's rows, each task's mean loss weighted by its
share of the labelled rows (the new task about half at the default ``batch``), the
experience-replay objective of Chaudhry et al. (2019, "On tiny episodic memories in
continual learning") and of Avalanche's replay plugin.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from polytask.features import Features
from polytask.grow.data import Rows, concat
from polytask.grow.strategies._buffer import MemoryOptions, TaskBuffers
from polytask.grow.strategies.base import (
    STRATEGIES,
    ExperienceContext,
    Strategy,
    StrategyOptions,
    Tensors,
    old_data_needed,
)
from polytask.model import MultiTaskModel
from polytask.tasks import Task, labelled_rows
from polytask.train.hooks import Labels, StepHooks

BUFFER = "buffer."


class ReplayOptions(MemoryOptions):
    rows_per_task: int = Field(200, ge=1, description="rows kept per task (reservoir)")
    batch: int | None = Field(
        None, ge=1, description="replayed rows added to each batch (default: the batch size)"
    )
    weigh: Literal["tasks", "rows"] = Field(
        "tasks",
        description="the joint batch's objective: each task's mean loss once (tasks), or the "
        "mean over its rows (rows: each task by its share of the labelled rows)",
    )


class Replayed(StepHooks):
    """Appends rows drawn from the old tasks' buffers to every batch."""

    def __init__(
        self,
        memory: Rows,
        tasks: list[str],
        count: int,
        generator: torch.Generator,
        by_rows: bool = False,
    ):
        self.memory, self.tasks, self.count, self.generator = memory, tasks, count, generator
        self.by_rows = by_rows

    def task_weights(self, labels: Labels, tasks: list[Task]) -> torch.Tensor | None:
        """With ``weigh: rows``, each task's share of the batch's labelled rows."""
        if not self.by_rows:
            return None
        counts = labelled_rows(labels, tasks).sum(0).to(torch.float32)
        return counts / counts.sum().clamp(min=1.0)

    def batch(self, features: Features, labels: Labels) -> tuple[Features, Labels]:
        index = torch.randint(len(self.memory), (self.count,), generator=self.generator)
        drawn = self.memory.take(index)
        merged = Features(
            torch.cat([features.categorical, drawn.features.categorical]),
            torch.cat([features.numeric, drawn.features.numeric]),
        )
        out = {}
        for name, values in labels.items():
            extra = drawn.labels.get(name)
            if extra is None:
                extra = values.new_full((self.count, *values.shape[1:]), float("nan"))
            out[name] = torch.cat([values, extra])
        return merged, out


def pooled(buffers: TaskBuffers, tasks: list[str]) -> Rows | None:
    """The buffers of ``tasks`` as one set of rows, each labelled for its own task."""
    parts = [b.rows for b in buffers.filled() if b.task in tasks and b.rows is not None]
    return concat(parts) if parts else None


@STRATEGIES.register("replay")
class Replay(Strategy):
    """Experience replay: per-task reservoir buffers, rows replayed in every batch."""

    Options = ReplayOptions
    summary = "experience replay from a bounded reservoir buffer per task"

    def __init__(self, options: StrategyOptions) -> None:
        super().__init__(options)
        assert isinstance(options, ReplayOptions)
        self.buffers = TaskBuffers(options.rows_per_task, BUFFER)

    def begin(self, context: ExperienceContext) -> StepHooks | None:
        assert isinstance(self.options, ReplayOptions)
        old = [task.name for task in context.old_tasks]
        missing = [name for name in old if name not in self.buffers.buffers]
        if missing:
            if context.old is None:
                raise old_data_needed(self.registry_name, "rows (to fill the replay buffers)")
            self.buffers.offer(context.old, missing, context.generator)
        memory = pooled(self.buffers, old)
        if memory is None:
            return None
        count = self.options.batch or context.train.batch_size
        by_rows = self.options.weigh == "rows"
        return Replayed(memory, old, count, context.generator, by_rows)

    def end(self, model: MultiTaskModel, context: ExperienceContext) -> None:
        self.buffers.offer(context.rows, context.new, context.generator)

    def state(self) -> Tensors:
        return self.buffers.state()

    def load_state(self, state: Tensors, meta: dict[str, str]) -> None:
        self.buffers.load_state(state)
