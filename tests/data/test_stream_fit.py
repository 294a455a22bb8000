"""The preprocessor fitted in one streaming pass against the one fitted in memory."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polytask.config import parse_spec
from polytask.data.preprocess import Preprocessor, fit_scale
from polytask.data.readers import read_table
from polytask.data.stream import ParquetSource
from polytask.data.stream_fit import Reservoir, fit_streamed
from polytask.errors import DataError
from tests.conftest import base_spec, make_table


def write_parquet(frame: pd.DataFrame, path: Path, row_group_rows: int) -> Path:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, row_group_size=row_group_rows)
    return path


def streamed_and_in_memory(
    path: Path, batch_rows: int, sample_rows: int, **data
) -> tuple[Preprocessor, Preprocessor]:
    spec = parse_spec(base_spec(path, data={"stream": True, "split": {}, **data}))
    streamed = fit_streamed(
        ParquetSource(path),
        spec.data,
        spec.tasks,
        batch_rows=batch_rows,
        sample_rows=sample_rows,
        seed=0,
    )
    return streamed, Preprocessor.fit(read_table(path), spec.data, spec.tasks)


def test_streamed_fit_equals_the_in_memory_fit(tmp_path):
    frame = make_table(n=1000, seed=3)
    frame.loc[5, "x1"] = 40.0  # an extreme value the winsorised scaler clips
    frame["rare"] = np.where(np.arange(1000) % 100 == 0, "once", frame["color"])
    frame.loc[7, "rare"] = "alone"
    path = write_parquet(frame, tmp_path / "t.parquet", row_group_rows=300)
    # batches of 128 rows across row groups of 300: counts and samples merged many times
    streamed, in_memory = streamed_and_in_memory(
        path, batch_rows=128, sample_rows=5000, min_frequency=2
    )
    assert streamed.state == in_memory.state
    assert "alone" not in streamed.state["vocabularies"]["rare"]  # the frequency floor holds


def test_streamed_vocabulary_keeps_the_capped_rule(tmp_path):
    rng = np.random.default_rng(0)
    frame = make_table(n=600, seed=1)
    # many values, a long tail
    frame["code"] = np.char.add("v", rng.zipf(1.6, size=600).astype(str))
    path = write_parquet(frame, tmp_path / "t.parquet", row_group_rows=100)
    with pytest.warns(Warning, match="max_categories"):
        streamed, in_memory = streamed_and_in_memory(
            path, batch_rows=64, sample_rows=5000, max_categories=5
        )
    assert streamed.state["vocabularies"]["code"] == in_memory.state["vocabularies"]["code"]
    assert len(streamed.state["vocabularies"]["code"]) == 5


def test_a_folder_of_files_is_one_table(tmp_path):
    frame = make_table(n=500, seed=2)
    folder = tmp_path / "set"
    folder.mkdir()
    write_parquet(frame.iloc[:200], folder / "a.parquet", row_group_rows=64)
    write_parquet(frame.iloc[200:], folder / "b.parquet", row_group_rows=64)
    streamed, in_memory = streamed_and_in_memory(folder, batch_rows=50, sample_rows=10_000)
    assert streamed.state == in_memory.state


def test_scalers_from_a_reservoir_are_within_the_stated_tolerance(tmp_path):
    """Over sample_rows rows the scaler is fitted on a uniform sample: its mean is within a
    few std / sqrt(sample_rows) of the exact one (5 standard errors here) and so is its std."""
    frame = make_table(n=40_000, seed=5)
    path = write_parquet(frame, tmp_path / "t.parquet", row_group_rows=4096)
    sample = 2000
    streamed, in_memory = streamed_and_in_memory(path, batch_rows=1000, sample_rows=sample)
    tolerance = 5 / math.sqrt(sample)
    for column, (mean, std) in in_memory.state["numeric_stats"].items():
        got_mean, got_std = streamed.state["numeric_stats"][column]
        assert abs(got_mean - mean) <= tolerance * std, column
        assert abs(got_std - std) <= tolerance * std, column
        assert (got_mean, got_std) != (mean, std), column  # a sample, not the whole column
    assert streamed.state["vocabularies"] == in_memory.state["vocabularies"]  # still exact
    assert streamed.state["tasks"]["segment"] == in_memory.state["tasks"]["segment"]


def test_reservoir_is_uniform_and_seeded():
    stream = np.arange(100_000, dtype=np.float64)[:, None]
    first, second = Reservoir(1000, 1, seed=7), Reservoir(1000, 1, seed=7)
    for start in range(0, len(stream), 3000):
        first.add(stream[start : start + 3000])
        second.add(stream[start : start + 3000])
    sample = first.values()[:, 0]
    assert np.array_equal(sample, second.values()[:, 0])
    assert len(np.unique(sample)) == 1000
    # a uniform sample of 0..99,999: its mean within 5 standard errors of 49,999.5
    assert abs(sample.mean() - 49_999.5) < 5 * stream.std() / math.sqrt(1000)
    # each tenth of the stream holds about a tenth of the sample
    assert np.histogram(sample, bins=10, range=(0, 100_000))[0].min() > 60


def test_reservoir_holds_the_whole_stream_while_it_fits():
    reservoir = Reservoir(50, 2, seed=0)
    block = np.arange(80, dtype=np.float64).reshape(40, 2)
    reservoir.add(block)
    assert np.array_equal(reservoir.values(), block)
    assert fit_scale(reservoir.values()[:, 0].copy()) == fit_scale(block[:, 0].copy())


def test_an_out_of_range_value_is_refused_with_its_file_and_row(tmp_path):
    frame = make_table(n=400, seed=0)
    frame.loc[333, "x2"] = 1e300
    path = write_parquet(frame, tmp_path / "t.parquet", row_group_rows=100)
    with pytest.raises(DataError, match=r"column 'x2', .*t\.parquet, row 334: 1e\+300 is out"):
        streamed_and_in_memory(path, batch_rows=64, sample_rows=1000)


def test_a_cell_that_is_not_a_number_names_the_file_and_row(tmp_path):
    frame = make_table(n=300, seed=0)
    frame["x1"] = frame["x1"].astype(str)
    frame.loc[250, "x1"] = "oops"
    path = write_parquet(frame, tmp_path / "t.parquet", row_group_rows=100)
    spec = parse_spec(base_spec(path, data={"stream": True, "split": {}, "numeric": ["x1"]}))
    with pytest.raises(DataError, match=r"t\.parquet: column 'x1', row 251: 'oops' is not"):
        fit_streamed(
            ParquetSource(path), spec.data, spec.tasks, batch_rows=64, sample_rows=100, seed=0
        )
