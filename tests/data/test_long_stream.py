"""The streamed pivot of a large long table gives the frame the in-memory pivot gives, and
refuses what it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import polytask.data.long_stream as long_stream
from polytask.data.long import to_wide
from polytask.data.long_stream import stream_to_wide, streams
from polytask.data.readers import read_table
from polytask.data.tabular import read_labelled
from polytask.errors import DataError
from tests.data.test_long import _data, _long_and_wide

TARGETS = ["math", "passed"]


def _write(frame: pd.DataFrame, folder: Path, kind: str) -> Path:
    if kind == "parquet_folder":
        path = folder / "long"
        path.mkdir()
        half = len(frame) // 2
        frame.iloc[:half].to_parquet(path / "part-0.parquet", index=False)
        frame.iloc[half:].to_parquet(path / "part-1.parquet", index=False)
        return path
    if kind == "parquet":
        path = folder / "long.parquet"
        frame.to_parquet(path, index=False)
        return path
    path = folder / f"long.{kind}"
    frame.to_csv(path, index=False, sep="\t" if kind == "tsv" else ",")
    return path


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet", "parquet_folder"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("part_bytes", [long_stream.SPILL_PART_BYTES, 600])
def test_the_streamed_pivot_equals_the_in_memory_one(
    tmp_path: Path, monkeypatch, kind: str, weighted: bool, part_bytes: int
):
    """Aggregated whole, or (600 bytes a part) spilled to parts split by entity."""
    monkeypatch.setattr(long_stream, "SPILL_PART_BYTES", part_bytes)
    long, _ = _long_and_wide(seed=3, entities=60)
    if weighted:
        long["w"] = np.random.default_rng(0).uniform(0.5, 2.0, size=len(long))
    long.loc[long.index[::7], "age"] = np.nan  # an input given on some of an entity's rows
    path = _write(long, tmp_path, kind)
    data = _data(weight="w") if weighted else _data()
    expected = to_wide(read_table(path), data, TARGETS, "f")
    got = stream_to_wide(path, data, TARGETS, "f")
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_large_long_files_stream_and_small_ones_are_read_whole(tmp_path: Path, monkeypatch):
    long, _ = _long_and_wide(seed=1)
    path = _write(long, tmp_path, "parquet")
    assert not streams(path, _data())
    expected = read_labelled(path, _data(), TARGETS)
    monkeypatch.setattr(long_stream, "STREAM_PIVOT_BYTES", 1)
    assert streams(path, _data())
    assert not streams(tmp_path / "t.jsonl", _data())  # no streaming reader for it

    def refuse(*_args, **_kwargs):
        raise AssertionError("the long table was read whole")

    monkeypatch.setattr("polytask.data.tabular.read_table", refuse)
    pd.testing.assert_frame_equal(read_labelled(path, _data(), TARGETS), expected)


@pytest.mark.parametrize("part_bytes", [long_stream.SPILL_PART_BYTES, 600])
def test_refusals_name_what_the_in_memory_pivot_names(tmp_path: Path, monkeypatch, part_bytes):
    monkeypatch.setattr(long_stream, "SPILL_PART_BYTES", part_bytes)
    long, _ = _long_and_wide(seed=2)

    def refusal(frame: pd.DataFrame, name: str, targets=TARGETS) -> str:
        (tmp_path / name).mkdir()
        path = _write(frame, tmp_path / name, "csv")
        with pytest.raises(DataError) as caught:
            stream_to_wide(path, _data(), targets, "f")
        return str(caught.value)

    counts = long["id"].value_counts()
    who = counts.index[counts.to_numpy() >= 2][0]
    clash = long.copy()
    rows = clash.index[clash["id"] == who]
    clash.loc[rows, "age"] = [1.0, 2.0, *([2.0] * (len(rows) - 2))]
    assert refusal(clash, "clash") == (
        f"f: column 'age' holds 1.0 and 2.0 for entity {who!r}; an input of a long table "
        "belongs to the entity, one value per entity"
    )
    twice = pd.concat([long, long.iloc[[0]]], ignore_index=True)
    assert refusal(twice, "twice") == (
        f"f: entity {long['id'].iloc[0]!r} has two labels for task {long['task'].iloc[0]!r}; "
        "keep one row per (entity, task)"
    )
    empty = long.copy()
    empty.loc[5, "id"] = np.nan
    assert refusal(empty, "empty") == "f, row 6: data.entity column 'id' is empty"
    no_task = long.copy()
    no_task.loc[3, "task"] = np.nan
    assert refusal(no_task, "no_task") == "f, row 4: data.task_column column 'task' is empty"
    assert "no row has 'reading'" in refusal(long, "absent", ["math", "reading"])
    assert "data.label_column column 'y'" in refusal(long.rename(columns={"y": "z"}), "label")
