"""Bounded buffers of rows, one per task, kept by reservoir sampling (Vitter's algorithm R):
after n rows of a task have been offered, each of them is in its buffer with probability
min(1, k / n), whatever the order they came in, in however many experiences."""

from __future__ import annotations

import torch
from pydantic import Field

from polytask.features import Features
from polytask.grow.data import Rows
from polytask.grow.strategies.base import StrategyOptions, Tensors


class MemoryOptions(StrategyOptions):
    """Options of a strategy that keeps rows of each task."""

    rows_per_task: int = Field(256, ge=1, description="rows kept per task (reservoir)")


class Reservoir:
    """At most ``capacity`` rows of one task: a uniform sample of all rows offered so far."""

    def __init__(self, task: str, capacity: int) -> None:
        self.task, self.capacity = task, capacity
        self.seen = 0
        self.rows: Rows | None = None

    def offer(self, rows: Rows, generator: torch.Generator) -> None:
        """Algorithm R over ``rows`` (labelled for this task) in order, vectorised: row i
        (1-based over everything offered) fills a free slot, or replaces slot
        ``floor(u * i)`` when that is below the capacity; the last row choosing a slot wins."""
        labelled = ~torch.isnan(rows.labels[self.task].reshape(len(rows), -1)).all(1)
        rows = rows.take(labelled.nonzero().flatten())
        if not len(rows):
            return
        kept = len(self.rows) if self.rows is not None else 0
        free = min(self.capacity - kept, len(rows))
        if free > 0:
            self.rows = _concat(self.rows, rows.take(torch.arange(free)))
        rest = torch.arange(free, len(rows))
        if len(rest):
            number = self.seen + rest + 1  # 1-based position among all rows offered
            slot = torch.rand(len(rest), generator=generator, dtype=torch.float64) * number
            slot = slot.floor().long()
            chosen = slot < self.capacity
            if bool(chosen.any()):
                winner = torch.full((self.capacity,), -1, dtype=torch.long)
                winner.scatter_reduce_(0, slot[chosen], rest[chosen], reduce="amax")
                slots = (winner >= 0).nonzero().flatten()
                assert self.rows is not None
                self.rows = _replace(self.rows, slots, rows.take(winner[slots]))
        self.seen += len(rows)

    def state(self, prefix: str) -> Tensors:
        if self.rows is None:
            return {}
        return {
            f"{prefix}{self.task}.categorical": self.rows.features.categorical,
            f"{prefix}{self.task}.numeric": self.rows.features.numeric,
            f"{prefix}{self.task}.label": self.rows.labels[self.task],
            f"{prefix}{self.task}.seen": torch.tensor(self.seen),
        }

    @classmethod
    def from_state(cls, task: str, capacity: int, state: Tensors, prefix: str) -> Reservoir:
        buffer = cls(task, capacity)
        key = f"{prefix}{task}"
        features = Features(state[f"{key}.categorical"], state[f"{key}.numeric"])
        buffer.rows = Rows(features, {task: state[f"{key}.label"]})
        buffer.seen = int(state[f"{key}.seen"])
        if len(buffer.rows) > capacity:  # a smaller capacity now: keep a uniform part
            buffer.rows = buffer.rows.take(torch.arange(capacity))
        return buffer


def _concat(first: Rows | None, second: Rows) -> Rows:
    if first is None:
        return second
    features = Features(
        torch.cat([first.features.categorical, second.features.categorical]),
        torch.cat([first.features.numeric, second.features.numeric]),
    )
    return Rows(features, {k: torch.cat([v, second.labels[k]]) for k, v in first.labels.items()})


def _replace(rows: Rows, slots: torch.Tensor, new: Rows) -> Rows:
    categorical = rows.features.categorical.clone()
    numeric = rows.features.numeric.clone()
    categorical[slots], numeric[slots] = new.features.categorical, new.features.numeric
    labels = {}
    for key, value in rows.labels.items():
        value = value.clone()
        value[slots] = new.labels[key]
        labels[key] = value
    return Rows(Features(categorical, numeric), labels)


class TaskBuffers:
    """A reservoir per task, each of ``capacity`` rows."""

    def __init__(self, capacity: int, prefix: str) -> None:
        self.capacity, self.prefix = capacity, prefix
        self.buffers: dict[str, Reservoir] = {}

    def offer(self, rows: Rows, tasks: list[str], generator: torch.Generator) -> None:
        for task in tasks:
            if task in rows.labels:
                buffer = self.buffers.setdefault(task, Reservoir(task, self.capacity))
                buffer.offer(Rows(rows.features, {task: rows.labels[task]}), generator)

    def filled(self) -> list[Reservoir]:
        return [b for b in self.buffers.values() if b.rows is not None and len(b.rows)]

    def state(self) -> Tensors:
        out: Tensors = {}
        for buffer in self.buffers.values():
            out.update(buffer.state(self.prefix))
        return out

    def load_state(self, state: Tensors) -> None:
        tasks = {
            key[len(self.prefix) :].rsplit(".", 1)[0]
            for key in state
            if key.startswith(self.prefix)
        }
        self.buffers = {
            task: Reservoir.from_state(task, self.capacity, state, self.prefix) for task in tasks
        }
