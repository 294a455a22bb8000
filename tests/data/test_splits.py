"""Grouped, stratified and time-ordered splits, checked against their definitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polytask.config import SplitSpec, parse_spec
from polytask.data.splits import group_parts, stratified_parts, time_parts
from polytask.data.tabular import load_run_splits
from polytask.errors import ConfigError, DataError
from tests.conftest import base_spec, make_table


def _cover_once(parts, n: int) -> None:
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(n))


@pytest.mark.parametrize("seed", range(5))
def test_a_group_is_never_in_two_splits(seed):
    rng = np.random.default_rng(seed)
    groups = pd.Series(rng.integers(0, 37, size=500))
    parts = group_parts(groups, valid=0.2, test=0.15, seed=seed)
    _cover_once(parts, 500)
    sets = [set(groups.iloc[p]) for p in parts]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    # whole groups get as close to the shares as the largest group allows
    largest = int(groups.value_counts().max())
    assert abs(len(parts[1]) - 100) <= largest and abs(len(parts[2]) - 75) <= largest


def test_stratified_parts_keep_each_class_share():
    strata = pd.Series(["a"] * 300 + ["b"] * 100 + [None] * 40)
    train, valid, test = stratified_parts(strata, valid=0.2, test=0.1, seed=0)
    _cover_once((train, valid, test), 440)
    for part, share in ((valid, 0.2), (test, 0.1)):
        counts = strata.iloc[part].value_counts(dropna=False)
        assert counts["a"] == round(300 * share) and counts["b"] == round(100 * share)
        assert counts[np.nan] == round(40 * share)


def test_time_parts_are_ordered_and_keep_one_time_in_one_part():
    times = pd.Series([5, 1, 3, 3, 3, 2, 4, 6, 7, 8])
    train, valid, test = time_parts(times, valid=0.2, test=0.2)
    _cover_once((train, valid, test), 10)
    assert times.iloc[train].max() < times.iloc[valid].min()
    assert times.iloc[valid].max() < times.iloc[test].min()
    assert len(set(times.iloc[train]) & set(times.iloc[valid])) == 0


def test_time_split_by_dates_through_the_spec(tmp_path: Path):
    frame = make_table(n=50)
    frame["day"] = pd.date_range("2024-01-01", periods=50).astype(str)[::-1]
    frame.to_csv(tmp_path / "t.csv", index=False)
    raw = base_spec(tmp_path / "t.csv", data={"split": {"valid": 0.2, "test": 0.2, "time": "day"}})
    splits = load_run_splits(parse_spec(raw))
    assert splits.train["day"].max() < splits.valid["day"].min()
    assert splits.valid["day"].max() < splits.test["day"].min()
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (30, 10, 10)


def test_group_split_through_the_spec_keeps_groups_out_of_the_inputs(tmp_path: Path):
    from polytask.train.prepare import prepare

    frame = make_table(n=120)
    frame["patient"] = np.repeat(np.arange(30), 4)
    frame.to_csv(tmp_path / "t.csv", index=False)
    raw = base_spec(
        tmp_path / "t.csv", data={"split": {"valid": 0.2, "test": 0.2, "group": "patient"}}
    )
    spec = parse_spec(raw)
    splits = load_run_splits(spec)
    patients = [set(part["patient"]) for part in (splits.train, splits.valid, splits.test)]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2])
    assert "patient" not in prepare(spec).preprocessor.input_columns


def test_stratify_names_a_classification_task(tmp_path: Path):
    raw = base_spec("t.csv", data={"split": {"stratify": "spend"}})
    with pytest.raises(ConfigError, match="task 'spend' is regression"):
        parse_spec(raw)
    raw = base_spec("t.csv", data={"split": {"stratify": "clik"}})
    with pytest.raises(ConfigError, match="no task is named 'clik' \\(did you mean 'click'"):
        parse_spec(raw)
    with pytest.raises(ValueError, match="at most one of group, stratify and time"):
        SplitSpec(group="a", time="b")


def test_stratified_split_through_the_spec(tmp_path: Path):
    frame = make_table(n=200)
    frame.to_csv(tmp_path / "t.csv", index=False)
    raw = base_spec(
        tmp_path / "t.csv", data={"split": {"valid": 0.25, "test": 0.25, "stratify": "segment"}}
    )
    splits = load_run_splits(parse_spec(raw))
    counts = frame["segment"].value_counts()
    for part in (splits.valid, splits.test):
        assert (part["segment"].value_counts() == (counts * 0.25).round().astype(int)).all()


def test_split_columns_must_exist_and_be_filled(tmp_path: Path):
    frame = make_table(n=40)
    frame["patient"] = np.arange(40) // 2
    frame.loc[7, "patient"] = np.nan
    frame["when"] = "2024-01-01"
    frame.loc[3, "when"] = "soon"
    frame.to_csv(tmp_path / "t.csv", index=False)
    for split, message in (
        ({"group": "patients"}, r"column 'patients' is not in the table \(did you mean 'patient'"),
        ({"group": "patient"}, r"data.split.group: column 'patient' is empty at row 8"),
        ({"time": "when"}, r"column 'when' holds 'soon' at row 4, which is neither a number"),
    ):
        raw = base_spec(tmp_path / "t.csv", data={"split": split})
        with pytest.raises(DataError, match=message):
            load_run_splits(parse_spec(raw))


def test_given_files_sharing_a_group_are_refused(tmp_path: Path):
    train, valid = make_table(n=40, seed=1), make_table(n=20, seed=2)
    train["patient"], valid["patient"] = np.arange(40), np.arange(39, 59)
    train.to_csv(tmp_path / "train.csv", index=False)
    valid.to_csv(tmp_path / "valid.csv", index=False)
    raw = base_spec(tmp_path / "train.csv", data={"split": {"group": "patient"}})
    raw["data"]["valid"] = str(tmp_path / "valid.csv")
    with pytest.raises(DataError, match="group 39 of column 'patient' is in both the train"):
        load_run_splits(parse_spec(raw))
