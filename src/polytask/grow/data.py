"""Rows labelled for some tasks: each source of data labels its own tasks, and rows of
several sources train together with NaN labels where a source says nothing.

An experience's rows label the experience's tasks; old data labels the old tasks; replayed
rows label the tasks they were kept for. Keeping the labels of each source to its own tasks
matters when sources share a column name (every Split-MNIST experience's ``label``): a row of
one experience must not be read as a label of another's task.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from polytask.data.preprocess import Preprocessor
from polytask.errors import DataError
from polytask.features import Features
from polytask.tasks import Task
from polytask.train.prepare import SplitTensors


@dataclass
class Rows:
    """Model inputs for N rows and the labels of the tasks they label ([N] or [N, L])."""

    features: Features
    labels: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.features)

    def take(self, index: torch.Tensor) -> Rows:
        return Rows(self.features.take(index), {k: v[index] for k, v in self.labels.items()})


def encode(preprocessor: Preprocessor, frame: pd.DataFrame, tasks: list[Task]) -> Rows:
    """``frame`` as model inputs, labelled for those of ``tasks`` whose columns it holds."""
    present = [task for task in tasks if all(c in frame.columns for c in task.spec.columns)]
    return Rows(preprocessor.transform(frame), preprocessor.encode_labels(frame, present))


def unlabelled(task: Task, count: int) -> torch.Tensor:
    """NaN labels of ``task`` for ``count`` rows."""
    width = len(task.spec.columns) if task.kind.value == "multilabel" else None
    shape = (count,) if width is None else (count, width)
    return torch.full(shape, float("nan"))


def concat(parts: list[Rows]) -> Rows:
    """The rows of every part, in order, labelled for every task any part labels (NaN where
    a part does not label it)."""
    parts = [part for part in parts if len(part)]
    if not parts:
        raise DataError("no rows to train on")
    shapes: dict[str, tuple[int, ...]] = {}
    for part in parts:
        for name, values in part.labels.items():
            shapes.setdefault(name, tuple(values.shape[1:]))
    features = Features(
        torch.cat([part.features.categorical for part in parts]),
        torch.cat([part.features.numeric for part in parts]),
    )
    labels = {
        name: torch.cat(
            [
                part.labels[name]
                if name in part.labels
                else torch.full((len(part), *shape), float("nan"))
                for part in parts
            ]
        )
        for name, shape in shapes.items()
    }
    return Rows(features, labels)


def merge(parts: list[Rows], tasks: list[Task]) -> SplitTensors:
    """:func:`concat`, as a training split labelled for exactly ``tasks``."""
    rows = concat(parts)
    labels = {task.name: rows.labels.get(task.name, unlabelled(task, len(rows))) for task in tasks}
    return SplitTensors(rows.features, labels)


def sample(rows: Rows, count: int | None, generator: torch.Generator) -> Rows:
    """``count`` rows drawn without replacement (all of them when ``count`` is None or more)."""
    if count is None or count >= len(rows):
        return rows
    return rows.take(torch.randperm(len(rows), generator=generator)[:count].sort().values)


def as_rows(split: SplitTensors, tasks: list[str]) -> Rows:
    """A prepared split as rows labelled for ``tasks``."""
    return Rows(split.features, {name: split.labels[name] for name in tasks})
