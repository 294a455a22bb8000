"""Streamed training rows: every row once per epoch across ranks, a seeded shuffle that
changes with the epoch, a bounded buffer, and a streamed run trained end to end."""

from __future__ import annotations

import math
import subprocess
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polytask.config import parse_spec
from polytask.data.stream import deal
from polytask.errors import DataError
from polytask.inference.predictor import Predictor
from polytask.train import stream as stream_module
from polytask.train.distributed import World
from polytask.train.prepare import prepare
from tests.conftest import base_spec, make_table, write_splits, write_yaml
from tests.train.helpers import read_json, train
from tests.train.test_distributed import WORKER, environment, torchrun

ROWS = 1000


def write_parquet(frame: pd.DataFrame, path: Path, row_group_rows: int) -> Path:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, row_group_size=row_group_rows)
    return path


@pytest.fixture
def numbered(tmp_path: Path) -> Path:
    """A table whose ``row`` input holds each row's number (read raw: data.scaling none)."""
    frame = make_table(n=ROWS, seed=0)
    frame["row"] = np.arange(ROWS, dtype=np.float64)
    return write_parquet(frame, tmp_path / "t.parquet", row_group_rows=70)


def streamed(path: Path, buffer_rows: int = 100, batch_size: int = 30):
    spec = parse_spec(
        base_spec(
            path,
            data={
                "stream": {"batch_rows": 32, "buffer_rows": buffer_rows},
                "split": {},
                "scaling": "none",
            },
            train={"batch_size": batch_size},
        )
    )
    prepared = prepare(spec)
    column = prepared.preprocessor.numeric.index("row")
    return prepared.train_rows(), column


def epoch_rows(path: Path, seed: int, epoch: int, size: int) -> list[list[int]]:
    """The row numbers each simulated rank trains on, in order (uncounted rows left out);
    every rank runs the same number of steps."""
    rows, column = streamed(path)
    seen, steps = [], []
    for rank in range(size):
        batches = list(rows.batches(30, seed, epoch, World(rank=rank, size=size)))
        steps.append(len(batches))
        numbers = [
            int(v) for batch, counted in batches for v in batch.features.numeric[:counted, column]
        ]
        seen.append(numbers)
    assert len(set(steps)) == 1, steps
    return seen


def test_every_row_once_per_epoch_across_two_ranks(numbered):
    for epoch in (1, 2):
        first, second = epoch_rows(numbered, seed=0, epoch=epoch, size=2)
        assert sorted(first + second) == list(range(ROWS))
        assert set(first).isdisjoint(second)
        assert abs(len(first) - len(second)) <= 70  # at most one row group apart


def test_one_rank_trains_on_every_row(numbered):
    (only,) = epoch_rows(numbered, seed=0, epoch=1, size=1)
    assert sorted(only) == list(range(ROWS))


def test_the_shuffle_is_seeded_and_changes_with_the_epoch(numbered):
    once = epoch_rows(numbered, seed=3, epoch=1, size=2)
    assert epoch_rows(numbered, seed=3, epoch=1, size=2) == once
    assert epoch_rows(numbered, seed=3, epoch=2, size=2) != once
    assert epoch_rows(numbered, seed=4, epoch=1, size=2) != once
    (order,) = epoch_rows(numbered, seed=3, epoch=1, size=1)
    assert order != sorted(order)
    # rows are mixed across row groups: the first batch draws on more than one of them
    assert len({row // 70 for row in order[:30]}) > 1


def test_a_rank_holds_at_most_a_buffer_and_a_record_batch(numbered, monkeypatch):
    held: list[int] = []
    real = stream_module.concat

    def recording(parts):
        joined = real(parts)
        held.append(len(joined))
        return joined

    monkeypatch.setattr(stream_module, "concat", recording)
    rows, _ = streamed(numbered, buffer_rows=100)
    batches = list(rows.batches(30, 0, 1, World()))
    assert sum(len(batch) for batch, _ in batches) == ROWS
    assert held and max(held) <= 100 + 32  # the buffer, and one record batch over it


def test_full_batches_then_one_partial_then_uncounted_steps(numbered):
    """Each rank trains on its half of the global batch (15 of 30 rows), then its last
    partial batch, then (the rank with fewer rows) steps whose one row counts for nothing."""
    rows, _ = streamed(numbered)
    shares = deal(rows.source.row_groups, 2, 0, 1)
    counts = [
        [counted for _, counted in rows.batches(30, 0, 1, World(rank=r, size=2))] for r in (0, 1)
    ]
    assert len(counts[0]) == len(counts[1])
    for share, counted in zip(shares, counts, strict=True):
        mine = sum(group.rows for group in share)
        steps = math.ceil(mine / 15)
        assert counted[: steps - 1] == [15] * (steps - 1)
        assert counted[steps - 1] == mine - 15 * (steps - 1)
        assert counted[steps:] == [0] * (len(counted) - steps)
    assert len(counts[0]) == max(math.ceil(sum(g.rows for g in s) / 15) for s in shares)


def test_too_few_row_groups_for_the_ranks_is_one_line(tmp_path):
    path = write_parquet(make_table(n=50, seed=0), tmp_path / "t.parquet", row_group_rows=50)
    prepared = prepare(parse_spec(base_spec(path, data={"stream": True, "split": {}})))
    with pytest.raises(DataError, match="1 Parquet row groups, fewer than the 2 processes"):
        next(prepared.train_rows().batches(10, 0, 1, World(rank=0, size=2)))


def test_a_streamed_run_trains_and_evaluates_end_to_end(tmp_path):
    frames, paths = write_splits(tmp_path, train_rows=600)
    parquet = write_parquet(frames["train"], tmp_path / "train.parquet", row_group_rows=128)
    data = {"valid": str(paths["valid"]), "test": str(paths["test"]), "split": {}}
    streamed_run = train(
        base_spec(parquet, data={**data, "stream": {"batch_rows": 100, "buffer_rows": 256}}),
        tmp_path / "streamed",
    )
    in_memory_run = train(base_spec(parquet, data=data), tmp_path / "in_memory")
    summary = read_json(streamed_run / "summary.json")
    assert summary["streamed"] is True
    assert summary["rows"] == {"train": 600, "valid": 120, "test": 120}
    assert summary["epochs_run"] == 3
    # the preprocessor is the one the in-memory path fits on the same table
    assert read_json(streamed_run / "preprocessor.json") == read_json(
        in_memory_run / "preprocessor.json"
    )
    final = read_json(streamed_run / "metrics.json")
    assert set(final) == {"valid", "test"}
    auc = final["test"]["click"]["auc"]
    assert auc > 0.7  # it learnt (the in-memory run of this table reaches about the same)
    assert abs(auc - read_json(in_memory_run / "metrics.json")["test"]["click"]["auc"]) < 0.1
    # the run folder is complete: it predicts on raw rows
    predictions = Predictor.load(streamed_run).predict(frames["test"])
    assert len(predictions) == 120


def test_two_gloo_processes_train_a_streamed_table(tmp_path):
    """Under torchrun the preprocessor is fitted once (rank 0) and shared, each rank reads its
    own row groups (5 row groups: the ranks hold unequal rows and run as many steps), and
    the run finishes with the preprocessor one process fits."""
    frames, paths = write_splits(tmp_path, train_rows=600)
    parquet = write_parquet(frames["train"], tmp_path / "train.parquet", row_group_rows=128)
    data = {
        "valid": str(paths["valid"]),
        "test": str(paths["test"]),
        "split": {},
        "stream": {"batch_rows": 100, "buffer_rows": 256},
    }
    spec = base_spec(parquet, data=data, train={"threads": 1})
    config = write_yaml(tmp_path / "streamed.yaml", spec)
    done = subprocess.run(
        torchrun(str(WORKER), str(tmp_path / "runs"), str(config)),
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "runs" / "streamed"
    one = train(spec, tmp_path / "one")
    summary = read_json(two / "summary.json")
    assert summary["world_size"] == 2 and summary["streamed"] is True
    assert summary["rows"]["train"] == 600
    assert read_json(two / "preprocessor.json") == read_json(one / "preprocessor.json")
    assert read_json(two / "metrics.json")["test"]["click"]["auc"] > 0.7


def test_prefetched_keeps_the_order_raises_errors_and_stops_when_closed():
    assert list(stream_module.prefetched(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise DataError("t.parquet: column 'x', row 3: 'a' is not a number")

    with pytest.raises(DataError, match="row 3"):
        list(stream_module.prefetched(failing()))
    produced: list[int] = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    reader = stream_module.prefetched(endless(), depth=2)
    assert [next(reader) for _ in range(3)] == [0, 1, 2]
    reader.close()  # the thread stops: it produced at most depth + 2 items past those read
    count = len(produced)
    assert count <= 3 + 2 + 2
    assert not any(t.name == "polytask-stream" and t.is_alive() for t in threading.enumerate())


def test_a_global_batch_smaller_than_the_world_is_refused(numbered):
    from polytask.errors import ConfigError

    rows, _ = streamed(numbered)
    with pytest.raises(ConfigError, match=r"train\.batch_size \(2\) must be at least the number"):
        next(rows.batches(2, 0, 1, World(rank=0, size=3)))


def test_a_task_new_to_a_backbone_cannot_be_streamed(tmp_path):
    from polytask.config import load_spec
    from polytask.errors import ConfigError
    from polytask.train.trainer import fit

    frames, paths = write_splits(tmp_path, train_rows=120)
    base = base_spec(paths["train"], data={"valid": str(paths["valid"])}, train={"epochs": 1})
    base["tasks"] = base["tasks"][:1]
    backbone = fit(load_spec(base), tmp_path / "base", progress=False)
    table = write_parquet(frames["train"], tmp_path / "train.parquet", row_group_rows=40)
    spec = base_spec(
        table,
        data={"valid": str(paths["valid"]), "stream": True, "split": {}},
        model={"adapters": {"method": "lora", "backbone": str(backbone)}},
        train={"epochs": 1},
    )
    spec["tasks"] = spec["tasks"][1:2]
    with pytest.raises(ConfigError, match="new to the inputs"):
        fit(load_spec(spec), tmp_path / "run", progress=False)
