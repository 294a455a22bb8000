"""Every reader reads the same small table to the same frame; errors name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.io import savemat

from polytask.data.readers import READERS, read_table, reader_for
from polytask.errors import DataError


@pytest.fixture
def small() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "city": ["paris", "rome", "oslo", "rome"],
            "x": [0.5, -1.25, 3.0, np.nan],
            "n": [1, 2, 3, 4],
            "y": [1.0, 0.0, np.nan, 1.0],
        }
    )


def _write_all(frame: pd.DataFrame, folder: Path) -> dict[str, Path]:
    paths = {
        "csv": folder / "t.csv",
        "tsv": folder / "t.tsv",
        "parquet": folder / "t.parquet",
        "jsonl": folder / "t.jsonl",
        "feather": folder / "t.feather",
        "arrow": folder / "t.arrow",
    }
    frame.to_csv(paths["csv"], index=False)
    frame.to_csv(paths["tsv"], index=False, sep="\t")
    frame.to_parquet(paths["parquet"], index=False)
    frame.to_json(paths["jsonl"], orient="records", lines=True)
    frame.to_feather(paths["feather"])
    frame.to_feather(paths["arrow"])
    return paths


def test_each_reader_reads_the_same_table_to_the_same_frame(tmp_path: Path, small):
    for name, path in _write_all(small, tmp_path).items():
        read = read_table(path)
        pd.testing.assert_frame_equal(read, small, check_dtype=False, obj=name)


def test_a_parquet_folder_is_one_table(tmp_path: Path, small):
    folder = tmp_path / "parts"
    folder.mkdir()
    small.iloc[:2].to_parquet(folder / "part-0.parquet", index=False)
    small.iloc[2:].to_parquet(folder / "part-1.parquet", index=False)
    read = read_table(folder)
    pd.testing.assert_frame_equal(read, small, check_dtype=False)


def test_mat_columns_and_matrices(tmp_path: Path):
    path = tmp_path / "t.mat"
    features = np.arange(12.0).reshape(4, 3)
    savemat(path, {"X": features, "y": np.array([[1.0], [0.0], [1.0], [0.0]])})
    read = read_table(path)
    expected = pd.DataFrame(
        {"X_0": features[:, 0], "X_1": features[:, 1], "X_2": features[:, 2], "y": [1.0, 0, 1, 0]}
    )
    pd.testing.assert_frame_equal(read, expected)


def test_mat_cell_arrays_are_stacked_with_a_task_column(tmp_path: Path):
    """MALSAR's layout: X{t}, Y{t} hold task t's rows."""
    path = tmp_path / "school.mat"
    x = np.empty((1, 2), dtype=object)
    y = np.empty((1, 2), dtype=object)
    x[0, 0], y[0, 0] = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[10.0], [11.0]])
    x[0, 1], y[0, 1] = np.array([[5.0, 6.0]]), np.array([[12.0]])
    savemat(path, {"X": x, "Y": y})
    read = read_table(path)
    assert list(read.columns) == ["X_0", "X_1", "Y", "task"]
    np.testing.assert_array_equal(read["task"], [1, 1, 2])
    np.testing.assert_array_equal(read["Y"], [10.0, 11.0, 12.0])
    np.testing.assert_array_equal(read["X_1"], [2.0, 4.0, 6.0])


def test_mat_variables_of_different_lengths_are_named(tmp_path: Path):
    path = tmp_path / "bad.mat"
    savemat(path, {"X": np.zeros((4, 2)), "y": np.zeros((3, 1))})
    with pytest.raises(DataError, match=r"bad\.mat could not be read as mat: .*'X' 4, 'y' 3"):
        read_table(path)


def test_the_reader_is_picked_by_extension_and_can_be_forced(tmp_path: Path, small):
    assert reader_for(Path("a.csv.gz")) == "csv"
    assert reader_for(Path("a.TSV")) == "tsv"
    assert reader_for(Path("a.ndjson")) == "jsonl"
    assert reader_for(Path("a.data")) == "csv"
    path = tmp_path / "t.txt"
    small.to_csv(path, index=False, sep="\t")
    assert list(read_table(path).columns) == ["city\tx\tn\ty"]  # read as CSV: one column
    pd.testing.assert_frame_equal(read_table(path, "tsv"), small, check_dtype=False)
    assert set(READERS) == {"csv", "tsv", "parquet", "jsonl", "feather", "mat"}


def test_errors_name_the_file_and_the_line(tmp_path: Path):
    csv = tmp_path / "bad.csv"
    csv.write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(DataError, match=r"bad\.csv could not be read as csv: .*line 3"):
        read_table(csv)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"a": 1}\n{"a": 2}\n{"a" 3}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl could not be read as jsonl: .*row"):
        read_table(jsonl)
    feather = tmp_path / "bad.feather"
    feather.write_bytes(b"not arrow at all")
    with pytest.raises(DataError, match=r"bad\.feather could not be read as feather"):
        read_table(feather)
    with pytest.raises(DataError, match="is a folder; only a Parquet data set"):
        read_table(tmp_path, "csv")


# Delimited text goes through pyarrow's reader; pandas.read_csv is the reference it must equal.
ODD_TABLES = {
    "gaps and markers": "a,b,c\n1,x,2.5\n,NA,\n3,null,nan\n4,None,-1e3\n",
    "ints, bools, text": "n,flag,word\n1,True,a\n2,False,b\n3,True,c\n",
    "dates stay text": (
        "day,at,v\n2020-01-01,2020-01-01 10:00:00,1\n2020-01-02,2020-01-02T11:30:00,2\n"
    ),
    "an empty column": "a,empty,b\n1,,x\n2,,y\n",
    "quoted separators": 'a,b\n"x, y",1\n"z",2\n',
    "spaces before numbers": "a, b\n1, 2\n3, 4\n",
    "bool with a gap": "flag,v\nTrue,1\n,2\nFalse,3\n",
    "quoted line break": 'a,b\n"one\ntwo",1\nthree,2\n',
    "repeated names": "a,a,b\n1,2,3\n4,5,6\n",
}


@pytest.mark.parametrize("name", list(ODD_TABLES))
def test_csv_reads_as_pandas_reads_it(tmp_path: Path, name: str):
    path = tmp_path / "t.csv"
    path.write_text(ODD_TABLES[name])
    pd.testing.assert_frame_equal(read_table(path), pd.read_csv(path, low_memory=False))


def test_a_type_change_after_the_first_block_reads_as_pandas_reads_it(tmp_path: Path):
    """pyarrow infers types from its first block; a later text value falls back to pandas."""
    rows = ["v,w"] + [f"{i},{i % 7}" for i in range(300_000)] + ["text,1"]
    path = tmp_path / "t.csv"
    path.write_text("\n".join(rows) + "\n")
    pd.testing.assert_frame_equal(read_table(path), pd.read_csv(path, low_memory=False))


@pytest.mark.parametrize("suffix", [".csv.gz", ".csv.bz2", ".csv.zip", ".tsv.gz"])
def test_compressed_text_reads_as_pandas_reads_it(tmp_path: Path, small, suffix: str):
    path = tmp_path / f"t{suffix}"
    small.to_csv(path, index=False, sep="\t" if ".tsv" in suffix else ",")
    expected = pd.read_csv(path, sep="\t" if ".tsv" in suffix else ",")
    pd.testing.assert_frame_equal(read_table(path), expected)


def test_an_ordinary_csv_is_parsed_by_pyarrow(tmp_path: Path, small, monkeypatch):
    import polytask.data.readers as readers

    def refuse(*_args):
        raise AssertionError("pandas read a file pyarrow reads")

    monkeypatch.setattr(readers, "_read_text_pandas", refuse)
    path = tmp_path / "t.csv"
    small.to_csv(path, index=False)
    pd.testing.assert_frame_equal(read_table(path), small)
