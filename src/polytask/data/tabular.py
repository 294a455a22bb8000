"""Read the data section's tables and split them into train / valid / test.

The files are read by :mod:`polytask.data.readers`, a long table is pivoted to one row per
entity (:mod:`polytask.data.long`), and rows not given as their own files are carved out by
:mod:`polytask.data.splits`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from polytask.config import DataSpec, RunSpec, SplitSpec
from polytask.data import progress
from polytask.data.readers import PARQUET_SUFFIXES, read_table
from polytask.data.splits import check_groups_apart, split_positions
from polytask.errors import DataError

__all__ = [
    "PARQUET_SUFFIXES",
    "Splits",
    "load_run_splits",
    "load_splits",
    "read_labelled",
    "read_table",
]


@dataclass
class Splits:
    train: pd.DataFrame
    valid: pd.DataFrame | None
    test: pd.DataFrame | None


def split_frame(
    frame: pd.DataFrame,
    valid: float,
    test: float,
    seed: int,
    split: SplitSpec | None = None,
    strata: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """Split by ``split``'s rule (random by default); the same seed gives the same split.

    Each part keeps the rows' original index, so that an error found later names the row of
    the file it came from rather than its position inside the part."""
    rule = split if split is not None else SplitSpec(seed=seed)
    rule = rule.model_copy(update={"seed": seed})
    train_rows, valid_rows, test_rows = split_positions(frame, rule, valid, test, strata)
    if len(train_rows) == 0:
        raise DataError("data.split leaves no training rows")

    def take(rows: np.ndarray) -> pd.DataFrame | None:
        return frame.iloc[rows] if len(rows) else None

    return frame.iloc[train_rows], take(valid_rows), take(test_rows)


def read_labelled(path: str | Path, data: DataSpec, targets: Sequence[str]) -> pd.DataFrame:
    """A file of labelled rows as the run reads them: with the data section's reader, and
    pivoted to one row per entity where the data is long."""
    if data.format == "long":
        from polytask.data.long import to_wide
        from polytask.data.long_stream import stream_to_wide, streams

        if streams(Path(path), data):  # large: pivoted as it streams, never held long
            with progress.step(f"pivoting {Path(path).name} to one row per {data.entity}"):
                return stream_to_wide(Path(path), data, targets, f"data file {path}")
        frame = read_table(path, data.reader)
        with progress.step(f"pivoting {Path(path).name} to one row per {data.entity}"):
            return to_wide(frame, data, targets, f"data file {path}")
    return read_table(path, data.reader)


def load_splits(spec: DataSpec, targets: Sequence[str] = (), strata: str | None = None) -> Splits:
    """Resolve the data section into frames: a built-in dataset, or files with an optional
    split. ``targets``: the tasks' label columns (a long table keeps those task values);
    ``strata``: the label column of the ``data.split.stratify`` task."""
    if spec.dataset is not None:
        from polytask.data.datasets import load_dataset

        with progress.step(f"loading the {spec.dataset} dataset"):
            train, valid, test = load_dataset(spec.dataset, **spec.dataset_options)
        return Splits(train, valid, test)
    assert spec.train is not None
    if spec.stream is not None:
        raise DataError(
            f"data.train {spec.train} is streamed (data.stream), never read whole; this "
            "command needs it in memory: give the rows with --data, or train without stream"
        )
    train = read_labelled(spec.train, spec, targets)
    valid = read_labelled(spec.valid, spec, targets) if spec.valid is not None else None
    test = read_labelled(spec.test, spec, targets) if spec.test is not None else None
    if valid is None or test is None:
        train, split_valid, split_test = split_frame(
            train,
            valid=spec.split.valid if valid is None else 0.0,
            test=spec.split.test if test is None else 0.0,
            seed=spec.split.seed,
            split=spec.split,
            strata=strata,
        )
        valid = valid if valid is not None else split_valid
        test = test if test is not None else split_test
    check_groups_apart({"train": train, "valid": valid, "test": test}, spec)
    return Splits(train, valid, test)


def load_run_splits(spec: RunSpec) -> Splits:
    """The splits of a run: :func:`load_splits` told the run's label columns and the
    stratifying task's."""
    stratify = spec.data.split.stratify
    strata = next((t.target for t in spec.tasks if t.name == stratify), None)
    return load_splits(spec.data, spec.target_columns, strata)
