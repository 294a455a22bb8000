"""Per-row sample weights: ``data.weight: column`` (every task) or ``{task: column}``.

A weight says how much a row counts: a task's loss is the weighted mean of its labelled rows'
losses, ``sum(w * loss) / sum(w)``, and its metrics are weighted alike, so an integer weight
k counts a row exactly as k copies of it would. Weights are numbers >= 0; a labelled row
with a missing, negative or infinite weight is refused, naming the column and the row (a row
without the task's label needs no weight: it counts for nothing either way). In a long table
(``data.format: long``) the weight column is per (entity, task) row, pivoted beside the
labels as ``<column>[<task value>]``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from polytask.config import RunSpec
from polytask.data.preprocess import row_label, to_numeric
from polytask.errors import DataError, did_you_mean, shown


def weight_columns(spec: RunSpec) -> dict[str, str]:
    """Task name -> the column of its rows' weights (tasks without weights are absent)."""
    return spec.data.weight_columns(spec.tasks)


def encode_weights(
    frame: pd.DataFrame, columns: dict[str, str], labels: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Each weighted task's row weights [N] (float32; 0 where the row has no label)."""
    weights = {}
    for task, column in columns.items():
        if column not in frame.columns:
            raise DataError(
                f"data.weight: column '{column}' (task '{task}') is not in the table"
                f"{did_you_mean(column, frame.columns)}"
            )
        series = frame[column]
        values = to_numeric(series, f"data.weight, column '{column}'")
        present = labels[task].reshape(len(frame), -1).isnan().logical_not().any(dim=1).numpy()
        bad = present & ~(np.isfinite(values) & (values >= 0))
        if bad.any():
            position = int(np.flatnonzero(bad)[0])
            value = series.iloc[position]
            cell = "nothing" if pd.isna(value) else shown(value)
            raise DataError(
                f"data.weight: column '{column}' holds {cell} at {row_label(series, position)} "
                f"for a row labelled for task '{task}'; a weight is a finite number >= 0"
            )
        weights[task] = torch.from_numpy(np.where(present, values, 0.0).astype(np.float32))
    return weights
