"""Which task each row of a forward pass runs as, and the layout that batches rows by task.

An adapter model turns a batch whose rows ask for different tasks into (row, task) pairs,
ordered task by task, and runs the backbone once on all of them. Each adapter layer then needs
the pairs' tasks. The backbone's modules have their own ``forward`` signatures (a user's
``nn.Module`` among them), so the routing travels beside the call, in a context variable: one
per thread and per asyncio task, so that a model serves several threads at once without care.

:class:`RowTasks` also lays the pairs out as a padded [T, S] grid (S the largest task's count)
so that a per-task product over all pairs is one batched matmul: ``group`` scatters [.., P, ..]
rows into the grid and ``ungroup`` reads them back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

from polytask.errors import PolytaskError


@dataclass
class RowTasks:
    """The task of each of P rows (sorted: all of task 0's rows, then task 1's, ...).

    tasks [P] int64, of T tasks. The grid has a row of S slots for each of the G tasks
    present (tasks without rows take no room): ``present`` [G], their ids; counts [G], their
    rows; slots [P], each row's place in the flattened [G * S] grid. auxiliary: losses the
    adapters add during the pass (load balancing), summed by the model.
    """

    tasks: torch.Tensor
    num_tasks: int
    present: torch.Tensor
    counts: list[int]
    width: int  # S
    slots: torch.Tensor
    auxiliary: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def of(cls, tasks: torch.Tensor, num_tasks: int) -> RowTasks:
        """The layout of ``tasks`` [P], which must be sorted."""
        present, compact, counts_tensor = torch.unique_consecutive(
            tasks, return_inverse=True, return_counts=True
        )
        counts = [int(c) for c in counts_tensor.tolist()]
        width = max(counts) if counts else 0
        starts = torch.cumsum(counts_tensor, 0) - counts_tensor
        position = torch.arange(len(tasks), device=tasks.device) - starts[compact]
        return cls(tasks, num_tasks, present, counts, width, compact * width + position)

    @property
    def rows(self) -> int:
        return int(self.tasks.shape[0])

    @property
    def groups(self) -> int:
        """G, the tasks that have rows."""
        return len(self.counts)

    @property
    def even(self) -> bool:
        """Every task present has the same number of rows: the rows already are the grid."""
        return self.width * self.groups == self.rows

    def weights(self, table: torch.Tensor) -> torch.Tensor:
        """The entries of a per-task table [T, ...] that the grid's tasks read: [G, ...]."""
        if self.groups == self.num_tasks:
            return table
        return table.index_select(0, self.present)

    def group(self, x: torch.Tensor) -> torch.Tensor:
        """[M, P, K, F] -> [G, M, S*K, F]: each task's rows together (zeros where a task has
        fewer than S rows), so that ``grouped @ rows.weights(per_task[T, M, F, H])`` is one
        batched product (on a CPU, far faster than one thin product per task). A view when
        even (one task, or equal shares)."""
        members, _, tokens, features = x.shape
        if self.even:
            return x.view(members, self.groups, self.width * tokens, features).transpose(0, 1)
        grid = x.new_zeros(members, self.groups * self.width, tokens, features)
        grid = grid.index_copy(1, self.slots, x)
        grid = grid.view(members, self.groups, self.width * tokens, features)
        return grid.transpose(0, 1)

    def ungroup(self, grouped: torch.Tensor, tokens: int) -> torch.Tensor:
        """[G, M, S*K, H] -> [M, P, K, H], the rows in their original order."""
        groups, members, _, features = grouped.shape
        grid = grouped.transpose(0, 1).reshape(members, groups * self.width, tokens, features)
        return grid if self.even else grid.index_select(1, self.slots)

    def per_row(self, table: torch.Tensor) -> torch.Tensor:
        """Row p's entry of a per-task table [T, ...] -> [P, ...]."""
        return table.index_select(0, self.tasks)


_CURRENT: ContextVar[RowTasks | None] = ContextVar("polytask_row_tasks", default=None)


@contextmanager
def routed(rows: RowTasks) -> Iterator[RowTasks]:
    """Run the adapters inside as ``rows`` says."""
    token = _CURRENT.set(rows)
    try:
        yield rows
    finally:
        _CURRENT.reset(token)


def current(rows_seen: int) -> RowTasks:
    """The routing of the pass in progress, checked against the ``rows_seen`` by a layer."""
    rows = _CURRENT.get()
    if rows is None:
        raise PolytaskError(
            "an adapter layer ran outside its adapter model's forward pass (call the model, "
            "not its backbone's modules)"
        )
    if rows.rows != rows_seen:
        raise PolytaskError(
            f"an adapter layer saw {rows_seen} rows but the batch has {rows.rows}: adapters "
            "need the backbone to keep rows in the first dimension"
        )
    return rows
