"""Read CSV and Parquet tables and split them into train / valid / test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from polytask.config import DataSpec
from polytask.data import progress
from polytask.errors import DataError

PARQUET_SUFFIXES = {".parquet", ".pq"}


# What pandas infers from a path's suffix, given explicitly when it reads an open handle.
Compression = Literal["gzip", "bz2", "zip", "xz", "zstd"]
COMPRESSION: dict[str, Compression] = {
    ".gz": "gzip",
    ".bz2": "bz2",
    ".zip": "zip",
    ".xz": "xz",
    ".zst": "zstd",
}


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV (optionally compressed) or Parquet file; a clear error where it cannot."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            with progress.step(f"reading {path.name}"):
                frame = pd.read_parquet(path)
        else:
            with progress.counted(path) as handle:
                if handle is None:
                    frame = pd.read_csv(path, low_memory=False)
                else:  # the same reader on the same bytes, counted for a progress bar
                    compression = COMPRESSION.get(path.suffix.lower())
                    frame = pd.read_csv(handle, low_memory=False, compression=compression)
    except pd.errors.EmptyDataError:
        raise DataError(f"data file {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"data file {path} could not be read: {first_line}") from None
    if len(frame) == 0:
        raise DataError(f"data file {path} has a header but no rows")
    frame.columns = [str(c) for c in frame.columns]
    return frame


@dataclass
class Splits:
    train: pd.DataFrame
    valid: pd.DataFrame | None
    test: pd.DataFrame | None


def split_frame(
    frame: pd.DataFrame, valid: float, test: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """Random row split by fractions; the same seed gives the same split.

    Each part keeps the rows' original index, so that an error found later names the row of
    the file it came from rather than its position inside the part."""
    order = np.random.default_rng(seed).permutation(len(frame))
    n_valid, n_test = round(valid * len(frame)), round(test * len(frame))
    valid_rows, test_rows = order[:n_valid], order[n_valid : n_valid + n_test]
    train_rows = order[n_valid + n_test :]
    if len(train_rows) == 0:
        raise DataError("data.split leaves no training rows")

    def take(rows: np.ndarray) -> pd.DataFrame | None:
        return frame.iloc[np.sort(rows)] if len(rows) else None

    return frame.iloc[np.sort(train_rows)], take(valid_rows), take(test_rows)


def load_splits(spec: DataSpec) -> Splits:
    """Resolve the data section into frames: a built-in dataset, or files with an optional split."""
    if spec.dataset is not None:
        from polytask.data.datasets import load_dataset

        with progress.step(f"loading the {spec.dataset} dataset"):
            train, valid, test = load_dataset(spec.dataset, **spec.dataset_options)
        return Splits(train, valid, test)
    assert spec.train is not None
    train = read_table(spec.train)
    valid = read_table(spec.valid) if spec.valid is not None else None
    test = read_table(spec.test) if spec.test is not None else None
    if valid is None or test is None:
        train, split_valid, split_test = split_frame(
            train,
            valid=spec.split.valid if valid is None else 0.0,
            test=spec.split.test if test is None else 0.0,
            seed=spec.split.seed,
        )
        valid = valid if valid is not None else split_valid
        test = test if test is not None else split_test
    return Splits(train, valid, test)
