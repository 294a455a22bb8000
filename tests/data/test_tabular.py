"""Reading CSV / Parquet tables and splitting them."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from polytask.config import parse_spec
from polytask.data import progress
from polytask.data.tabular import load_splits, read_table, split_frame
from polytask.errors import DataError
from polytask.train.prepare import prepare
from tests.conftest import base_spec, make_table


def test_read_csv_and_parquet_give_the_same_table(tmp_path: Path, table: pd.DataFrame):
    table.to_csv(tmp_path / "t.csv", index=False)
    table.to_parquet(tmp_path / "t.parquet", index=False)
    table.to_parquet(tmp_path / "t.pq", index=False)
    from_csv = read_table(tmp_path / "t.csv")
    from_parquet = read_table(tmp_path / "t.parquet")
    assert list(from_csv.columns) == list(table.columns)
    assert len(from_csv) == len(from_parquet) == len(read_table(tmp_path / "t.pq")) == len(table)
    np.testing.assert_allclose(from_parquet["x1"], table["x1"])
    np.testing.assert_allclose(from_csv["x1"], table["x1"], rtol=1e-12)


def test_read_gzipped_csv(tmp_path: Path, table: pd.DataFrame):
    with gzip.open(tmp_path / "t.csv.gz", "wt") as handle:
        table.to_csv(handle, index=False)
    assert len(read_table(tmp_path / "t.csv.gz")) == len(table)


def test_missing_file(tmp_path: Path):
    with pytest.raises(DataError, match=r"data file not found: .*nope\.csv"):
        read_table(tmp_path / "nope.csv")


def test_header_only_table(tmp_path: Path):
    (tmp_path / "h.csv").write_text("a,b,y\n")
    with pytest.raises(DataError, match="has a header but no rows"):
        read_table(tmp_path / "h.csv")


def test_empty_file(tmp_path: Path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_table(tmp_path / "e.csv")


def test_unreadable_parquet(tmp_path: Path):
    (tmp_path / "bad.parquet").write_bytes(b"not a parquet file at all")
    with pytest.raises(DataError, match="could not be read"):
        read_table(tmp_path / "bad.parquet")


def test_split_fractions_are_disjoint_and_cover_the_table():
    frame = pd.DataFrame({"i": np.arange(100)})
    train, valid, test = split_frame(frame, valid=0.2, test=0.1, seed=3)
    assert (len(train), len(valid), len(test)) == (70, 20, 10)
    ids = [set(part["i"]) for part in (train, valid, test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert ids[0] | ids[1] | ids[2] == set(range(100))
    # rows keep their order within each part
    assert list(train["i"]) == sorted(train["i"])


def test_split_is_seeded():
    frame = pd.DataFrame({"i": np.arange(50)})
    first = split_frame(frame, 0.2, 0.2, seed=1)
    again = split_frame(frame, 0.2, 0.2, seed=1)
    other = split_frame(frame, 0.2, 0.2, seed=2)
    for a, b in zip(first, again, strict=True):
        assert list(a["i"]) == list(b["i"])
    assert list(first[1]["i"]) != list(other[1]["i"])


def test_split_with_zero_fraction_gives_no_part():
    frame = pd.DataFrame({"i": np.arange(10)})
    train, valid, test = split_frame(frame, 0.0, 0.3, seed=0)
    assert valid is None and len(test) == 3 and len(train) == 7


def test_split_leaving_no_training_rows():
    with pytest.raises(DataError, match="no training rows"):
        split_frame(pd.DataFrame({"i": [1, 2]}), 0.5, 0.45, seed=0)


def test_load_splits_uses_given_files_and_carves_only_what_is_missing(tmp_path: Path):
    make_table(n=100, seed=1).to_csv(tmp_path / "train.csv", index=False)
    make_table(n=30, seed=2).to_csv(tmp_path / "valid.csv", index=False)
    raw = base_spec(tmp_path / "train.csv")
    raw["data"]["valid"] = str(tmp_path / "valid.csv")
    raw["data"]["split"] = {"valid": 0.5, "test": 0.25, "seed": 0}
    splits = load_splits(parse_spec(raw).data)
    assert len(splits.valid) == 30
    assert len(splits.test) == 25  # carved from train
    assert len(splits.train) == 75


def test_error_after_a_split_names_the_row_of_the_file(tmp_path: Path):
    """Row numbers count data rows of the file (1-based), not positions inside a split."""
    frame = make_table(n=60)
    frame["clicked"] = frame["clicked"].fillna(0)
    frame.loc[36, "clicked"] = 3
    frame.to_csv(tmp_path / "t.csv", index=False)
    for seed in (0, 1, 2):
        raw = base_spec(
            tmp_path / "t.csv", data={"split": {"valid": 0.3, "test": 0.3, "seed": seed}}
        )
        with pytest.raises(DataError, match=r"holds 3 at row 37;"):
            prepare(parse_spec(raw))


def test_parquet_training_table(tmp_path: Path):
    frame = make_table(n=80)
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    prepared = prepare(parse_spec(base_spec(tmp_path / "t.parquet")))
    assert sum(len(split) for split in prepared.splits.values()) == 80
    assert prepared.preprocessor.categorical == ["color", "city"]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_reading_with_progress_gives_the_same_table(
    tmp_path: Path, table: pd.DataFrame, monkeypatch, suffix
):
    """Progress for large files reads the same bytes with the same reader: same table."""
    path = tmp_path / f"table{suffix}"
    table.assign(code=["007", "8", "x", "9.0"] * 60).to_csv(path, index=False)
    plain = read_table(path)
    monkeypatch.setattr(progress, "PROGRESS_MIN_BYTES", 0)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with progress.reporting(console=console):
        shown = read_table(path)
    pd.testing.assert_frame_equal(shown, plain)
    assert f"reading table{suffix}" in screen.getvalue()


def test_preparation_steps_are_shown_only_when_asked(tmp_path: Path, table_csv: Path):
    spec = parse_spec(base_spec(table_csv))
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with progress.reporting(console=console):
        prepare(spec)
    assert "fitting the preprocessor on 144 rows" in screen.getvalue()
    quiet = io.StringIO()
    with progress.reporting(enabled=False, console=Console(file=quiet, force_terminal=True)):
        prepare(spec)
    assert quiet.getvalue() == ""


def test_a_streamed_training_table_is_never_loaded_whole(tmp_path):
    spec = parse_spec(base_spec(tmp_path / "t.parquet", data={"stream": True, "split": {}}))
    with pytest.raises(DataError, match=r"t\.parquet is streamed \(data\.stream\), never read"):
        load_splits(spec.data)
