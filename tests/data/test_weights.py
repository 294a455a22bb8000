"""Sample weights: the loss and the metrics are weighted as defined (an integer weight k
counts a row as k copies of it), and bad weights are named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from polytask.config import TaskKind, TaskSpec, parse_spec
from polytask.data.long import to_wide
from polytask.errors import ConfigError, DataError
from polytask.tasks import Task
from polytask.train.prepare import prepare
from tests.conftest import base_spec, make_table

KINDS = [
    Task(TaskSpec(name="b", kind=TaskKind.binary, target="y"), 1),
    Task(TaskSpec(name="m", kind=TaskKind.multiclass, target="y"), 3, classes=[0, 1, 2]),
    Task(TaskSpec(name="r", kind=TaskKind.regression, target="y", loss="huber"), 1),
    Task(TaskSpec(name="l", kind=TaskKind.multilabel, targets=["a", "b"]), 2),
]


def _labels(task: Task, n: int, rng: np.random.Generator) -> torch.Tensor:
    if task.kind is TaskKind.multiclass:
        values = rng.integers(0, 3, size=n).astype(np.float32)
    elif task.kind is TaskKind.regression:
        values = rng.normal(size=n).astype(np.float32)
    else:
        values = rng.integers(0, 2, size=(n, task.out_dim) if task.out_dim > 1 else n)
        values = values.astype(np.float32)
    values[rng.random(size=n) < 0.2] = np.nan
    return torch.from_numpy(values)


@pytest.mark.parametrize("task", KINDS, ids=lambda t: t.kind.value)
def test_weighted_loss_is_the_weighted_mean_and_equals_repeated_rows(task: Task):
    rng = np.random.default_rng(0)
    n = 30
    logits = torch.from_numpy(rng.normal(size=(n, task.out_dim)).astype(np.float32))
    labels = _labels(task, n, rng)
    counts = rng.integers(0, 4, size=n)
    weighted = task.loss(logits, labels, torch.from_numpy(counts.astype(np.float32)))
    repeat = torch.from_numpy(np.repeat(np.arange(n), counts))
    repeated = task.loss(logits[repeat], labels[repeat])
    torch.testing.assert_close(weighted, repeated)
    # the definition: sum(w * loss) / sum(w) over labelled entries
    ones = task.loss(logits, labels)
    halves = task.loss(logits, labels, torch.full((n,), 0.5))
    torch.testing.assert_close(halves, ones)  # a common scale does not change the mean
    assert not torch.allclose(weighted, ones)


@pytest.mark.parametrize("task", KINDS, ids=lambda t: t.kind.value)
def test_weighted_metrics_equal_repeated_rows(task: Task):
    rng = np.random.default_rng(1)
    n = 60
    logits = torch.from_numpy(rng.normal(size=(n, task.out_dim)).astype(np.float32))
    predictions = task.outputs(logits).numpy()
    labels = _labels(task, n, rng).numpy()
    counts = rng.integers(0, 4, size=n)
    repeat = np.repeat(np.arange(n), counts)
    weighted = task.metrics(predictions, labels, counts.astype(np.float64))
    repeated = task.metrics(predictions[repeat], labels[repeat])
    assert weighted == pytest.approx(repeated)
    for metric, value in weighted.items():
        assert task.normalised(metric, value, labels, counts.astype(np.float64)) == (
            pytest.approx(task.normalised(metric, value, labels[repeat]), nan_ok=True)
        )


def test_weights_reach_the_training_loss(tmp_path: Path):
    """A spec's data.weight: the prepared tensors carry it, zero where unlabelled."""
    frame = make_table(n=80)
    frame["w"] = np.arange(80) % 3
    frame.to_csv(tmp_path / "t.csv", index=False)
    spec = parse_spec(base_spec(tmp_path / "t.csv", data={"weight": {"click": "w"}}))
    prepared = prepare(spec)
    assert "w" not in prepared.preprocessor.input_columns
    train = prepared.splits["train"]
    assert set(train.weights) == {"click"}
    labelled = ~torch.isnan(train.labels["click"])
    assert (train.weights["click"][~labelled] == 0).all()
    assert set(train.weights["click"][labelled].tolist()) <= {0.0, 1.0, 2.0}


def test_bad_weights_are_named(tmp_path: Path):
    frame = make_table(n=40)
    frame["clicked"] = frame["clicked"].fillna(0)
    frame["w"] = 1.0
    frame.loc[5, "w"] = -2
    frame.to_csv(tmp_path / "t.csv", index=False)
    spec = parse_spec(
        base_spec(
            tmp_path / "t.csv", data={"weight": {"click": "w"}, "split": {"valid": 0, "test": 0}}
        )
    )
    with pytest.raises(DataError, match=r"column 'w' holds -2.0 at row 6 .*task 'click'"):
        prepare(spec)
    spec = parse_spec(base_spec(tmp_path / "t.csv", data={"weight": "wt"}))
    with pytest.raises(DataError, match=r"data.weight: column 'wt' .* \(did you mean 'w'"):
        prepare(spec)
    with pytest.raises(ConfigError, match=r"data.weight: no task is named 'clik'"):
        parse_spec(base_spec("t.csv", data={"weight": {"clik": "w"}}))


def test_a_long_tables_weights_are_per_task_row():
    long = pd.DataFrame(
        {
            "id": [1, 1, 2],
            "task": ["a", "b", "a"],
            "y": [1.0, 0.0, 1.0],
            "w": [2.0, 5.0, 3.0],
            "x": [0.1, 0.1, 0.2],
        }
    )
    spec = parse_spec(
        {
            "data": {
                "train": "t.csv",
                "format": "long",
                "entity": "id",
                "task_column": "task",
                "label_column": "y",
                "weight": "w",
            },
            "tasks": [
                {"name": "a", "kind": "binary", "target": "a"},
                {"name": "b", "kind": "binary", "target": "b"},
            ],
        }
    )
    wide = to_wide(long, spec.data, ["a", "b"], "f")
    assert spec.data.weight_columns(spec.tasks) == {"a": "w[a]", "b": "w[b]"}
    assert wide["w[a]"].tolist() == [2.0, 3.0]
    assert wide["w[b]"].iloc[0] == 5.0 and np.isnan(wide["w[b]"].iloc[1])
    assert wide["x"].tolist() == [0.1, 0.2]
