"""A Parquet training table read in pieces rather than loaded (``data.stream``).

The table is a Parquet file or a folder of them (one data set, as ``pyarrow.dataset`` finds
its files). Its unit of work is the row group: a table's row groups are listed from the
files' footers (no rows are read), each epoch deals them out to the ranks in a seeded order
that changes with the epoch, and a rank reads its row groups in record batches of
``data.stream.batch_rows`` rows. Every row group goes to exactly one rank, so across the
ranks every row is read exactly once per epoch.

Memory: one record batch at a time is read; what a rank keeps is bounded by its shuffle
buffer (:mod:`polytask.train.stream`), never by the number of rows in the table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from polytask.data.readers import PARQUET_SUFFIXES
from polytask.errors import DataError


@dataclass(frozen=True)
class RowGroup:
    """One row group of one file: the unit dealt out to ranks."""

    path: str
    index: int
    rows: int
    # the file's row number of its first row (a bad cell is named by its row in the file)
    first_row: int


@contextlib.contextmanager
def _named(path: str | Path) -> Iterator[None]:
    """A pyarrow failure as one line naming the file."""
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowException, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"data file {path} could not be read as parquet: {first}") from None


class ParquetSource:
    """The row groups and columns of a Parquet file or folder."""

    def __init__(self, path: str | Path) -> None:
        import pyarrow.dataset as ds

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"data file not found: {self.path}")
        if self.path.is_file() and self.path.suffix.lower() not in PARQUET_SUFFIXES:
            raise DataError(
                f"data.stream reads Parquet; {self.path} is not a .parquet file or a folder"
            )
        with _named(self.path):
            dataset = ds.dataset(self.path, format="parquet")
            self.columns: list[str] = [str(name) for name in dataset.schema.names]
            self.row_groups = _row_groups(sorted(dataset.files))
        if not self.row_groups:
            raise DataError(f"data file {self.path} has no rows")

    def __len__(self) -> int:
        return sum(group.rows for group in self.row_groups)

    def frames(
        self, groups: Sequence[RowGroup], batch_rows: int, columns: list[str] | None = None
    ) -> Iterator[tuple[pd.DataFrame, RowGroup]]:
        """The rows of ``groups``, in order, as frames of at most ``batch_rows`` rows, indexed
        by their row in the file (as a table read whole is); ``columns``: only those."""
        import pyarrow.parquet as pq

        for group in groups:
            with _named(group.path):
                file = pq.ParquetFile(group.path)
            try:  # closed also when the reader stops early (the generator is closed)
                offset = group.first_row
                with _named(group.path):
                    batches = file.iter_batches(
                        batch_size=batch_rows, row_groups=[group.index], columns=columns
                    )
                    for batch in batches:
                        frame = batch.to_pandas()
                        frame.index = pd.RangeIndex(offset, offset + len(frame))
                        offset += len(frame)
                        yield frame, group
            finally:
                file.close()


def _row_groups(files: list[str]) -> list[RowGroup]:
    """Every non-empty row group of ``files``, in file order (footers only)."""
    import pyarrow.parquet as pq

    groups = []
    for path in files:
        with _named(path):
            metadata = pq.ParquetFile(path).metadata
        first = 0
        for index in range(metadata.num_row_groups):
            rows = metadata.row_group(index).num_rows
            if rows:
                groups.append(RowGroup(path, index, rows, first))
            first += rows
    return groups


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's order: the run's seed and the epoch, as the in-memory order."""
    return seed * 1_000_003 + epoch


def deal(groups: Sequence[RowGroup], size: int, seed: int, epoch: int) -> list[list[RowGroup]]:
    """The row groups of each of ``size`` ranks for ``epoch``: shuffled from the seed and the
    epoch, then each given to the rank holding the fewest rows so far (the lowest rank on a
    tie), so the ranks' shares differ by at most one row group. Every rank computes the same
    deal, with no communication."""
    if len(groups) < size:
        raise DataError(
            f"data.train has {len(groups)} Parquet row groups, fewer than the {size} processes "
            "that share them; write it with more (smaller) row groups"
        )
    order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(len(groups))
    shares: list[list[RowGroup]] = [[] for _ in range(size)]
    held = [0] * size
    for position in order:
        rank = min(range(size), key=lambda r: (held[r], r))
        shares[rank].append(groups[int(position)])
        held[rank] += groups[int(position)].rows
    return shares
