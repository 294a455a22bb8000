"""MNIST and Fashion-MNIST as tables, for task-incremental streams (Split and Permuted MNIST).

One row per image: 784 pixel columns ``p0..p783`` (row-major, values in [0, 1]) and the class
in ``label``. ``classes`` keeps the images of some classes only (Split-MNIST's tasks: digits
0/1, 2/3, ...); ``permutation`` reorders the pixels by a fixed random permutation drawn from
that seed (Permuted-MNIST's tasks), None keeping them in place. Train rows are the original
training set's, test rows the original test set's; ``train_rows`` / ``test_rows`` keep a
seeded random subset for shorter schedules. Pair with ``model.encoder: {name: numeric}`` for
an MLP on the pixels.

``tasks`` builds a multi-task table instead: one group of rows per entry (``name``, and its
own ``classes`` / ``permutation``), the class in a column named after the entry and NaN in
the other entries' columns, so each row labels its own task only (a whole Split-MNIST stream
as one table, for joint training).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from polytask.data.datasets.multimnist import _find, idx_folder, read_idx
from polytask.errors import DataError

PIXELS = 28 * 28


@lru_cache(maxsize=8)
def _arrays(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split's images and labels, read once per process (a stream reads them per task)."""
    images, labels = _find(folder, split, "images"), _find(folder, split, "labels")
    assert images is not None and labels is not None  # idx_folder checked all four
    return read_idx(images), read_idx(labels)


def _frame(images: np.ndarray, labels: np.ndarray, order: np.ndarray | None) -> pd.DataFrame:
    pixels = images.reshape(len(images), PIXELS).astype(np.float32) / 255.0
    if order is not None:
        pixels = pixels[:, order]
    frame = pd.DataFrame(pixels, columns=[f"p{i}" for i in range(PIXELS)])
    frame["label"] = labels.astype(np.int64)
    return frame


def _subset(
    images: np.ndarray, labels: np.ndarray, classes: list[int] | None, rows: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    keep = np.arange(len(labels))
    if classes is not None:
        keep = np.flatnonzero(np.isin(labels, classes))
    if rows is not None and rows < len(keep):
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=rows, replace=False))
    return images[keep], labels[keep]


def load_digits(
    path: str | None = None,
    source: str = "mnist",
    classes: list[int] | None = None,
    permutation: int | None = None,
    train_rows: int | None = None,
    test_rows: int | None = None,
    seed: int = 0,
    download: bool = True,
    tasks: list[dict] | None = None,
) -> tuple[pd.DataFrame, None, pd.DataFrame]:
    """Train and test frames (no validation rows: carve them with ``train_rows`` elsewhere,
    or train without early stopping). ``path``: a folder with the four idx files (else
    ``~/.cache/polytask/<source>``, downloaded if missing)."""
    if tasks is not None:
        return _multi_task(tasks, path, source, train_rows, test_rows, seed, download)
    if classes is not None and (not classes or any(not 0 <= c <= 9 for c in classes)):
        raise DataError(f"digits: classes must be class numbers 0..9 (got {classes!r})")
    folder = idx_folder("digits", path, source, download)
    order = None if permutation is None else np.random.default_rng(permutation).permutation(PIXELS)
    frames = []
    for split, rows, offset in (("train", train_rows, 0), ("test", test_rows, 1)):
        images, labels = _arrays(folder.resolve(), split)
        frames.append(_frame(*_subset(images, labels, classes, rows, seed + offset), order))
    return frames[0], None, frames[1]


def _multi_task(
    tasks: list[dict],
    path: str | None,
    source: str,
    train_rows: int | None,
    test_rows: int | None,
    seed: int,
    download: bool,
) -> tuple[pd.DataFrame, None, pd.DataFrame]:
    """One group of rows per task, labelled in the task's own column (NaN elsewhere)."""
    names = [str(entry.get("name", "")) for entry in tasks]
    if not tasks or "" in names or len(set(names)) != len(names):
        raise DataError("digits: tasks needs entries with distinct names")
    parts: list[list[pd.DataFrame]] = [[], []]
    for entry in tasks:
        unknown = sorted(set(entry) - {"name", "classes", "permutation"})
        if unknown:
            raise DataError(f"digits: tasks entry '{entry['name']}': unknown key(s) {unknown}")
        frames = load_digits(
            path,
            source,
            entry.get("classes"),
            entry.get("permutation"),
            train_rows,
            test_rows,
            seed,
            download,
        )
        for group, frame in zip(parts, (frames[0], frames[2]), strict=True):
            labels = frame.pop("label").astype("float64")
            for name in names:
                frame[name] = labels if name == entry["name"] else np.nan
            group.append(frame)
    train, test = (pd.concat(group, ignore_index=True) for group in parts)
    return train, None, test
