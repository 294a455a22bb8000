"""A Parquet table's row groups: listed from the footers, read in record batches indexed by
their row in the file, and dealt out to ranks from the seed and the epoch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polytask.data.stream import ParquetSource, RowGroup, deal
from polytask.errors import DataError
from tests.conftest import make_table


def write(frame: pd.DataFrame, path: Path, row_group_rows: int) -> Path:
    pq.write_table(
        pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=row_group_rows
    )
    return path


def test_row_groups_and_frames_cover_the_table_in_order(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    frame = make_table(n=450, seed=0)
    write(frame.iloc[:250], folder / "a.parquet", 100)
    write(frame.iloc[250:], folder / "b.parquet", 100)
    source = ParquetSource(folder)
    assert len(source) == 450
    assert [(Path(g.path).name, g.index, g.rows, g.first_row) for g in source.row_groups] == [
        ("a.parquet", 0, 100, 0),
        ("a.parquet", 1, 100, 100),
        ("a.parquet", 2, 50, 200),
        ("b.parquet", 0, 100, 0),
        ("b.parquet", 1, 100, 100),
    ]
    parts = [part for part, _ in source.frames(source.row_groups, batch_rows=40)]
    assert max(len(part) for part in parts) == 40
    whole = pd.concat(parts)
    assert whole["x1"].tolist() == frame["x1"].tolist()
    # each frame's index is the row's number in its own file (errors name that row)
    assert parts[-1].index[-1] == 199


def test_only_the_columns_asked_for_are_read(tmp_path):
    source = ParquetSource(write(make_table(n=120), tmp_path / "t.parquet", 100))
    (first, _), *_ = source.frames(source.row_groups, 64, columns=["x1", "clicked"])
    assert list(first.columns) == ["x1", "clicked"]


def groups(sizes: list[int]) -> list[RowGroup]:
    return [RowGroup(f"f{i}.parquet", 0, rows, 0) for i, rows in enumerate(sizes)]


def test_deal_gives_every_row_group_to_one_rank_balanced_and_seeded():
    table = groups([100, 100, 100, 100, 100, 100, 100, 37])
    shares = deal(table, 3, seed=0, epoch=1)
    dealt = sorted((g for share in shares for g in share), key=lambda g: g.path)
    assert dealt == sorted(table, key=lambda g: g.path)
    rows = [sum(g.rows for g in share) for share in shares]
    assert max(rows) - min(rows) <= 100  # within one row group of each other
    assert deal(table, 3, seed=0, epoch=1) == shares
    assert deal(table, 3, seed=0, epoch=2) != shares
    assert deal(table, 3, seed=1, epoch=1) != shares


def test_fewer_row_groups_than_ranks_is_one_line():
    with pytest.raises(DataError, match="2 Parquet row groups, fewer than the 3 processes"):
        deal(groups([10, 10]), 3, seed=0, epoch=1)


def test_what_cannot_be_streamed_is_named(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        ParquetSource(tmp_path / "absent.parquet")
    csv = tmp_path / "t.csv"
    make_table(n=10).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"t\.csv is not a \.parquet file or a folder"):
        ParquetSource(csv)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"broken\.parquet could not be read as parquet"):
        ParquetSource(broken)
