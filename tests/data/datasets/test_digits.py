"""The digits tables: classes kept, pixels permuted by a seeded permutation, a multi-task
table labelling each row for its own task only; idx files written here (no shared data)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from polytask.data.datasets.digits import PIXELS, load_digits
from polytask.errors import DataError


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">HBB3I", 0, 8, 3, len(images), 28, 28) + images.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">HBBI", 0, 8, 1, len(labels)) + labels.tobytes())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 60), ("t10k", 20)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        write_idx(tmp_path, prefix, images, labels)
    return tmp_path


def test_classes_rows_and_scale(folder):
    train, valid, test = load_digits(str(folder), classes=[2, 3], train_rows=8)
    assert valid is None and len(train) == 8 and len(test) == 4
    assert set(train["label"]) <= {2, 3} and set(test["label"]) == {2, 3}
    pixels = train[[f"p{i}" for i in range(PIXELS)]].to_numpy()
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def test_permutation_reorders_pixels_the_same_way_in_both_splits(folder):
    plain_train, _, plain_test = load_digits(str(folder))
    train, _, test = load_digits(str(folder), permutation=7)
    order = np.random.default_rng(7).permutation(PIXELS)
    columns = [f"p{i}" for i in range(PIXELS)]
    assert np.array_equal(train[columns].to_numpy(), plain_train[columns].to_numpy()[:, order])
    assert np.array_equal(test[columns].to_numpy(), plain_test[columns].to_numpy()[:, order])


def test_multi_task_table_labels_each_row_for_its_own_task(folder):
    tasks = [{"name": "low", "classes": [0, 1]}, {"name": "high", "classes": [8, 9]}]
    train, _, _ = load_digits(str(folder), tasks=tasks)
    assert "label" not in train.columns
    low, high = train["low"].notna(), train["high"].notna()
    assert not (low & high).any() and (low | high).all()
    assert set(train.loc[low, "low"]) == {0.0, 1.0} and set(train.loc[high, "high"]) == {8, 9}
    with pytest.raises(DataError, match="distinct names"):
        load_digits(str(folder), tasks=[{"name": "a"}, {"name": "a"}])


def test_bad_options_are_named(folder):
    with pytest.raises(DataError, match="classes"):
        load_digits(str(folder), classes=[11])
    with pytest.raises(DataError, match="source"):
        load_digits(str(folder), source="cifar")
