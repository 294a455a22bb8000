"""What every way of predicting from a run shares: its spec, fitted preprocessor and tasks,
which input columns it accepts, and how per-task outputs become the prediction table.

:class:`~polytask.inference.predictor.Predictor` (the model, torch) and
:class:`~polytask.inference.array_predictor.ArrayPredictor` (the lean arrays, numpy) build
on it, so the two answer with the same columns, checks and messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polytask.artifacts import run_dir as rd
from polytask.config import RunSpec, TaskKind
from polytask.data.columns import ignored_columns, refuse_unknown
from polytask.data.preprocess import Preprocessor, row_label
from polytask.errors import DataError
from polytask.tasks import Task, output_columns


class RunRows:
    """A run's spec, preprocessor and tasks: the raw-row side of predicting."""

    def __init__(self, run: Path, spec: RunSpec, preprocessor: Preprocessor) -> None:
        self.run = run
        self.spec = spec
        self.preprocessor = preprocessor
        self.tasks: list[Task] = preprocessor.build_tasks(spec.tasks)

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    @property
    def ignored_columns(self) -> list[str]:
        """Columns of the training table that the model does not read (targets, data.drop):
        accepted in rows to predict, and ignored. Recorded at fit time; for a run fitted
        before that, the spec's targets and drop list."""
        recorded = self.preprocessor.state.get("ignored_columns")
        if recorded is not None:
            return list(recorded)
        spec = self.spec
        targets = [c for task in spec.tasks for c in task.columns]
        return ignored_columns(self.preprocessor.input_columns, targets, spec.data.drop)

    def check_columns(self, frame: pd.DataFrame) -> None:
        """Refuse columns the run does not know (see :mod:`polytask.data.columns`)."""
        refuse_unknown(frame.columns, self.preprocessor.input_columns, self.ignored_columns)

    def output_columns(self) -> dict[str, str]:
        """The columns :meth:`predict` returns, each with what it holds."""
        return output_columns(self.tasks)

    def summary(self) -> dict[str, Any]:
        return rd.load_json(self.run, rd.SUMMARY)

    def check_rows(self, frame: pd.DataFrame, allow_unknown_columns: bool) -> None:
        """Refuse, before any work, an empty table, unknown columns (unless allowed) and
        output names that would collide."""
        if len(frame) == 0:
            raise DataError("no rows to predict")
        if not allow_unknown_columns:
            self.check_columns(frame)
        self.output_columns()

    def prediction_frame(self, frame: pd.DataFrame, values: list[np.ndarray]) -> pd.DataFrame:
        """Per-task outputs on the user's scale -> the prediction table (see ``predict``);
        a row whose prediction is not a finite number is refused, naming it."""
        columns: dict[str, Any] = {}
        for task, task_values in zip(self.tasks, values, strict=True):
            _check_finite(task_values, task, frame)
            if task.kind is TaskKind.multiclass:
                classes = np.asarray(task.classes, dtype=object)
                columns[task.name] = classes[task_values.argmax(axis=1)]
                for index, label in enumerate(task.classes):
                    columns[f"{task.name}_p_{label}"] = task_values[:, index]
            elif task.kind is TaskKind.multilabel:
                for index, column in enumerate(task.spec.columns):
                    columns[f"{task.name}_{column}"] = task_values[:, index]
            else:
                columns[task.name] = task_values
        return pd.DataFrame(columns, index=frame.index)


def _check_finite(values: np.ndarray, task: Task, frame: pd.DataFrame) -> None:
    """Refuse, naming the first row, outputs that are not finite numbers."""
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        where = row_label(frame, int(np.flatnonzero(bad)[0]))
        raise DataError(
            f"{where}: the prediction for task '{task.name}' is not a finite number "
            f"({int(bad.sum())} such rows); an input is far outside what the model was trained on"
        )
