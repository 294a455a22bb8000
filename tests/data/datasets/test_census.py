"""The census loader and the sample shipped with polytask."""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polytask.data.datasets import load_dataset
from polytask.data.datasets.census import (
    TEST_FILE,
    TRAIN_FILE,
    load_census_income,
    load_census_income_sample,
    read_census_file,
)
from polytask.errors import ConfigError, DataError

COLLEGE_PREFIXES = (
    "Some college",
    "Associates",
    "Bachelors",
    "Masters",
    "Prof school",
    "Doctorate",
)


def _sample_lines(name: str) -> list[str]:
    files = resources.files("polytask.data.datasets") / "files"
    with resources.as_file(files / name) as path, gzip.open(path, "rt") as handle:
        return handle.read().splitlines()


@pytest.fixture(scope="module")
def sample() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return load_census_income_sample(group=None)  # all three label columns


def test_sample_sizes(sample):
    train, valid, test = sample
    assert len(train) == 12_000
    assert len(valid) == len(test) == 3_000


def test_sample_labels_are_zero_one(sample):
    for frame in sample:
        for label in ("income", "never_married", "college"):
            assert set(frame[label].unique()) == {0, 1}
            assert frame[label].isna().sum() == 0


def test_label_sources_and_weight_are_not_features(sample):
    for frame in sample:
        for column in ("education", "marital_stat", "instance_weight", "income_label"):
            assert column not in frame.columns
        assert frame.shape[1] == 42 - 4 + 3
        for column in ("age", "wage_per_hour", "weeks_worked_in_year"):
            assert pd.api.types.is_numeric_dtype(frame[column])


def test_sample_labels_follow_their_definitions(sample):
    """Recompute the three labels from the raw UCI lines, independently of the loader."""
    fields = [line.split(", ") for line in _sample_lines("census_income_sample.data.gz")]
    income = np.array([f[-1].strip().startswith("50000+") for f in fields], dtype=int)
    never_married = np.array([f[7] == "Never married" for f in fields], dtype=int)
    college = np.array([f[4].startswith(COLLEGE_PREFIXES) for f in fields], dtype=int)
    train = sample[0]
    np.testing.assert_array_equal(train["income"], income)
    np.testing.assert_array_equal(train["never_married"], never_married)
    np.testing.assert_array_equal(train["college"], college)
    np.testing.assert_array_equal(train["age"], [int(f[0]) for f in fields])
    # each label has both classes in real proportions
    assert 0.02 < income.mean() < 0.2 and 0.2 < never_married.mean() < 0.6


def test_valid_and_test_are_the_seeded_halves_of_the_test_file(sample):
    _, valid, test = sample
    files = resources.files("polytask.data.datasets") / "files"
    with resources.as_file(files / "census_income_sample.test.gz") as path:
        whole = read_census_file(path)
    columns = list(whole.columns)
    halves = pd.concat([valid, test]).sort_values(columns).reset_index(drop=True)
    pd.testing.assert_frame_equal(halves, whole.sort_values(columns).reset_index(drop=True))
    again = load_census_income_sample(group=None)
    pd.testing.assert_frame_equal(again[1], valid)
    other = load_census_income_sample(seed=1, group=None)
    assert not other[1].equals(valid)


@pytest.mark.parametrize(
    ("group", "kept", "dropped"),
    [(1, {"income", "never_married"}, "college"), (2, {"college", "never_married"}, "income")],
)
def test_a_task_group_keeps_only_its_own_labels(group, kept, dropped):
    """A label column of the other group left in the frame would become an input."""
    for frame in load_census_income_sample(group=group):
        assert kept <= set(frame.columns)
        assert dropped not in frame.columns


def test_missing_files_name_the_file(tmp_path: Path):
    with pytest.raises(DataError) as info:
        load_census_income(path=str(tmp_path))
    message = str(info.value)
    assert TRAIN_FILE in message and TEST_FILE in message and str(tmp_path) in message


def test_only_the_missing_file_is_named(tmp_path: Path):
    (tmp_path / TRAIN_FILE).write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_census_income(path=str(tmp_path))
    assert TEST_FILE in str(info.value)
    assert TRAIN_FILE not in str(info.value)


def _write_gz(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")


def test_load_from_a_folder(tmp_path: Path):
    _write_gz(tmp_path / TRAIN_FILE, _sample_lines("census_income_sample.data.gz")[:40])
    _write_gz(tmp_path / TEST_FILE, _sample_lines("census_income_sample.test.gz")[:21])
    train, valid, test = load_census_income(path=str(tmp_path))
    assert (len(train), len(valid), len(test)) == (40, 10, 11)


def test_a_file_without_the_uci_fields_is_rejected(tmp_path: Path):
    _write_gz(tmp_path / "bad.gz", ["1, 2, 3", "4, 5, 6"])
    with pytest.raises(DataError, match="UCI fields"):
        read_census_file(tmp_path / "bad.gz")


def test_dataset_registry():
    train, _, _ = load_dataset("census_income_sample")
    assert len(train) == 12_000
    with pytest.raises(ConfigError, match="did you mean 'census_income'"):
        load_dataset("census_incme")
    with pytest.raises(ConfigError, match="dataset_options"):
        load_dataset("census_income_sample", colour="red")


def _pandas_reference(path: Path) -> pd.DataFrame:
    """The file read by pandas, field by field as text (an independent reader)."""
    from polytask.data.datasets.census import COLLEGE, NUMERIC, RAW_COLUMNS

    raw = pd.read_csv(
        path,
        header=None,
        names=RAW_COLUMNS,
        skipinitialspace=True,
        dtype=str,
        na_values=["?"],
        keep_default_na=False,
    )
    raw = raw.replace("", np.nan)
    frame = raw.drop(columns=["education", "marital_stat", "instance_weight", "income_label"])
    for column in NUMERIC:
        frame[column] = pd.to_numeric(frame[column])
    frame["income"] = raw["income_label"].str.startswith("50000+").astype(np.int64)
    frame["never_married"] = (raw["marital_stat"] == "Never married").astype(np.int64)
    frame["college"] = raw["education"].isin(COLLEGE).astype(np.int64)
    return frame


@pytest.mark.parametrize("name", ["census_income_sample.data.gz", "census_income_sample.test.gz"])
def test_the_arrow_reader_reads_what_pandas_reads(name):
    files = resources.files("polytask.data.datasets") / "files"
    with resources.as_file(files / name) as path:
        ours, reference = read_census_file(path), _pandas_reference(path)
    assert list(ours.columns) == list(reference.columns)
    for column in ours.columns:
        if isinstance(ours[column].dtype, pd.CategoricalDtype):
            got = [None if pd.isna(v) else v for v in ours[column].astype(object)]
            expected = [None if pd.isna(v) else v for v in reference[column]]
            assert got == expected, column
        else:
            np.testing.assert_array_equal(ours[column].to_numpy(), reference[column].to_numpy())
