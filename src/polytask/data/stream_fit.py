"""The preprocessor fitted in one pass over a streamed Parquet table.

The rules are the in-memory ones (:mod:`polytask.data.preprocess`); what is kept while the
rows go by, and how exact the result is:

* Column types: a column of a numeric Parquet type is numeric, as in memory; a text column is
  numeric when its first record batch (``data.stream.batch_rows`` rows) parses as numbers
  (in memory: the whole column). Listing ``data.numeric`` / ``data.categorical`` decides it.
* Vocabularies: exact value counts, merged batch by batch, then the in-memory rule (the
  ``data.min_frequency`` floor, the ``data.max_categories`` cap); identical to the in-memory
  vocabulary. Memory grows with a column's distinct values, not its rows; a capped column
  that passes :data:`DISTINCT_LIMIT` distinct values drops the values seen once so far
  (warned: its counts are then approximate, as in lossy counting).
* Classes of multiclass tasks and which target columns hold labels: exact.
* Scalers (numeric columns and regression targets): the in-memory fit (mean and standard
  deviation of values winsorised at their 0.5 % and 99.5 % order statistics) applied to a
  uniform reservoir sample of ``data.stream.sample_rows`` rows (Vitter's algorithm R,
  seeded by ``train.seed``). With no more rows than that the sample is the whole table and
  the scalers are identical to the in-memory ones; beyond, the clipping quantiles are sample
  quantiles and the winsorised mean is off by about std / sqrt(sample_rows) (0.001 std at
  the default 1,000,000 rows).
* The range check (a value farther than ``RANGE_LIMIT`` standard deviations, or infinite,
  is refused): on each column's exact minimum and maximum, tracked over every row, with the
  file and row of the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from polytask.config import DataSpec, TaskKind, TaskSpec
from polytask.data import progress
from polytask.data.preprocess import (
    RANGE_LIMIT,
    Preprocessor,
    as_text,
    check_columns,
    checked_classes,
    fit_scale,
    no_labels,
    observed_classes,
    out_of_range_message,
    require_targets,
    row_label,
    sorted_counts,
    to_numeric,
    value_counts,
    vocabulary_from_counts,
)
from polytask.data.stream import ParquetSource
from polytask.errors import DataError, warn

# A capped categorical column holding more distinct values than this drops those seen once.
DISTINCT_LIMIT = 2_000_000


class Reservoir:
    """A uniform sample of at most ``size`` rows of a stream of [rows, columns] blocks
    (algorithm R, vectorised per block). Until ``size`` rows have passed it holds all of
    them, in order."""

    def __init__(self, size: int, width: int, seed: int) -> None:
        self.size = size
        self.sample = np.empty((size, width), dtype=np.float64)
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    def add(self, block: np.ndarray) -> None:
        filled = min(self.seen, self.size)
        direct = min(self.size - filled, len(block))
        self.sample[filled : filled + direct] = block[:direct]
        rest = block[direct:]
        if len(rest):
            # row t (0-based over the stream) replaces slot j ~ U{0..t} when j < size
            positions = np.arange(self.seen + direct, self.seen + len(block))
            slots = self._rng.integers(0, positions + 1)
            taken = np.flatnonzero(slots < self.size)
            # of several rows drawing one slot, the last one stays (as drawn one by one)
            reversed_slots = slots[taken][::-1]
            _, last = np.unique(reversed_slots, return_index=True)
            keep = taken[::-1][last]
            self.sample[slots[keep]] = rest[keep]
        self.seen += len(block)

    def values(self) -> np.ndarray:
        return self.sample[: min(self.seen, self.size)]


@dataclass
class Extremes:
    """Each column's smallest and largest present value over every row, and where it was."""

    width: int
    low: np.ndarray = field(init=False)
    high: np.ndarray = field(init=False)
    where_low: list[str] = field(init=False)
    where_high: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.low = np.full(self.width, np.inf)
        self.high = np.full(self.width, -np.inf)
        self.where_low = [""] * self.width
        self.where_high = [""] * self.width

    def add(self, block: np.ndarray, frame: pd.DataFrame, path: str) -> None:
        missing = np.isnan(block)
        low = np.where(missing, np.inf, block).min(axis=0, initial=np.inf)
        high = np.where(missing, -np.inf, block).max(axis=0, initial=-np.inf)
        for j in np.flatnonzero(low < self.low):
            self.low[j] = low[j]
            position = int(np.argmin(np.where(missing[:, j], np.inf, block[:, j])))
            self.where_low[j] = f"{path}, {row_label(frame, position)}"
        for j in np.flatnonzero(high > self.high):
            self.high[j] = high[j]
            position = int(np.argmax(np.where(missing[:, j], -np.inf, block[:, j])))
            self.where_high[j] = f"{path}, {row_label(frame, position)}"

    def check(self, j: int, what: str, mean: float, std: float) -> None:
        """Refuse column ``j``'s extremes where they are out of range (as in memory)."""
        for value, where in ((self.low[j], self.where_low[j]), (self.high[j], self.where_high[j])):
            if where and not abs((value - mean) / std) <= RANGE_LIMIT:
                raise DataError(out_of_range_message(f"{what}, {where}", value, mean, std))


class Counts:
    """Exact value counts of one categorical column, merged batch by batch."""

    def __init__(self, column: str, capped: bool) -> None:
        self.column = column
        self.capped = capped
        self.total = pd.Series(dtype="int64")
        self.pruned = 0

    def add(self, series: pd.Series) -> None:
        counts = value_counts(series)
        self.total = self.total.add(counts, fill_value=0).astype("int64")
        if self.capped and len(self.total) > DISTINCT_LIMIT:
            once = self.total == 1
            self.pruned += int(once.sum())
            self.total = self.total[~once]

    def sorted(self) -> pd.Series:
        if self.pruned:
            warn(
                f"column '{self.column}': over {DISTINCT_LIMIT:,} distinct values while "
                f"streaming; {self.pruned:,} values seen once so far were dropped, so its "
                "counts are approximate"
            )
        return sorted_counts(self.total)


class StreamFit:
    """What one pass keeps to fit the preprocessor: value counts, a reservoir sample of the
    numeric columns and regression targets, their extremes, and the tasks' label facts."""

    def __init__(
        self,
        first: pd.DataFrame,
        columns: Sequence[str],
        data: DataSpec,
        tasks: list[TaskSpec],
        sample_rows: int,
        seed: int,
    ) -> None:
        self.data, self.tasks, self.columns = data, tasks, list(columns)
        targets = [column for task in tasks for column in task.columns]
        for task in tasks:
            require_targets(first, task)
        check_columns(first, data.drop, "data.drop")
        self.categorical, self.numeric = Preprocessor.feature_columns(
            first, data, tasks, set(targets)
        )
        self.regression = [t for t in tasks if t.kind is TaskKind.regression]
        self.what = [f"column '{c}'" for c in self.numeric] + [
            f"task '{t.name}', column '{t.target}'" for t in self.regression
        ]
        self.sources = [*self.numeric, *(str(t.target) for t in self.regression)]
        self.reservoir = Reservoir(sample_rows, len(self.sources), seed)
        self.extremes = Extremes(len(self.sources))
        capped = data.max_categories is not None
        self.counts = {c: Counts(c, capped) for c in self.categorical}
        self.labelled = {c: False for c in targets}
        self.classes: dict[str, set[Any]] = {
            t.name: set() for t in tasks if t.kind is TaskKind.multiclass
        }

    def add(self, frame: pd.DataFrame, path: str) -> None:
        """One record batch's rows; an error names the file and the row."""
        try:
            self._add(frame, path)
        except DataError as error:
            raise DataError(f"{path}: {error}") from None

    def _add(self, frame: pd.DataFrame, path: str) -> None:
        if self.sources:
            pairs = zip(self.sources, self.what, strict=True)
            block = np.column_stack([to_numeric(frame[c], what) for c, what in pairs])
            self.reservoir.add(block)
            self.extremes.add(block, frame, path)
        for column, counts in self.counts.items():
            counts.add(frame[column])
        for column, seen in self.labelled.items():
            if not seen:
                series = frame[column]
                numeric = ptypes.is_numeric_dtype(series)
                present = series.notna() if numeric else as_text(series).notna()
                self.labelled[column] = bool(present.any())
        for task in self.tasks:
            if task.name in self.classes:
                self.classes[task.name] |= observed_classes(frame[task.target], task)

    def preprocessor(self, image: bool) -> Preprocessor:
        for task in self.tasks:
            for column in task.columns:
                if not self.labelled[column]:
                    raise no_labels(task, column)
        sample = self.reservoir.values()
        scales = self._scales(sample, image)
        regression = {}
        for k, task in enumerate(self.regression, start=len(self.numeric)):
            regression[task.name] = fit_scale(sample[:, k].copy())
        fitted = [*scales, *(regression[t.name] for t in self.regression)]
        for j, (what, (mean, std)) in enumerate(zip(self.what, fitted, strict=True)):
            self.extremes.check(j, what, mean, std)
        task_state: dict[str, dict[str, Any]] = {}
        for task in self.tasks:
            if task.kind is TaskKind.multiclass:
                task_state[task.name] = {"classes": checked_classes(self.classes[task.name], task)}
            elif task.kind is TaskKind.regression:
                mean, std = regression[task.name]
                task_state[task.name] = {"mean": mean, "std": std}
            else:
                task_state[task.name] = {}
        inputs = set(self.categorical) | set(self.numeric)
        vocabularies = {
            c: vocabulary_from_counts(self.counts[c].sorted(), c, self.data)
            for c in self.categorical
        }
        return Preprocessor(
            {
                "categorical": self.categorical,
                "numeric": self.numeric,
                "numeric_stats": {
                    c: [float(m), float(s)] for c, (m, s) in zip(self.numeric, scales, strict=True)
                },
                "vocabularies": vocabularies,
                "tasks": task_state,
                "ignored_columns": [c for c in self.columns if c not in inputs],
            }
        )

    def _scales(self, sample: np.ndarray, image: bool) -> list[tuple[float, float]]:
        """[mean, std] per numeric column by ``data.scaling``, from the sample."""
        width = len(self.numeric)
        scaling = self.data.scaling
        if scaling == "auto":
            scaling = "block" if image else "standard"
        if scaling == "none":
            return [(0.0, 1.0)] * width
        if scaling == "block" and width:
            block = fit_scale(np.concatenate([sample[:, j] for j in range(width)]))
            return [block] * width
        return [fit_scale(sample[:, j].copy()) for j in range(width)]


def fit_streamed(
    source: ParquetSource,
    data: DataSpec,
    tasks: list[TaskSpec],
    *,
    image: bool = False,
    batch_rows: int,
    sample_rows: int,
    seed: int,
) -> Preprocessor:
    """The preprocessor of ``source``'s rows, fitted in one pass over its record batches."""
    frames = source.frames(source.row_groups, batch_rows)
    first, group = next(frames)
    state = StreamFit(first, source.columns, data, tasks, sample_rows, seed)
    with progress.step(f"fitting the preprocessor on {len(source):,} streamed rows"):
        state.add(first, group.path)
        for frame, group in frames:
            state.add(frame, group.path)
        return state.preprocessor(image)
