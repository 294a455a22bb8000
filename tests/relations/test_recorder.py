"""Recording relations during training: the files it writes, resume, and no effect on the run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import polytask
from polytask.errors import ConfigError
from polytask.train.trainer import fit
from tests.conftest import base_spec


def _spec(table_csv, relations=None, epochs=3):
    train = {"epochs": epochs}
    if relations is not None:
        train["relations"] = relations
    return base_spec(table_csv, train=train)


def test_run_writes_relations_per_epoch(tmp_path, table_csv):
    polytask.train(_spec(table_csv, {"every": 2}), tmp_path / "run")
    report = json.loads((tmp_path / "run" / "relations.json").read_text())
    assert report["tasks"] == ["click", "segment", "spend", "tags"]
    assert [row["epoch"] for row in report["epochs"]] == [1, 2, 3]
    # 144 training rows in batches of 64: 3 steps per epoch, measured at steps 0, 2, 4, 6, 8
    assert [row["measurements"] for row in report["epochs"]] == [2, 1, 2]
    mean = report["mean"]["affinity"]
    assert len(mean) == 4 and all(len(row) == 4 for row in mean)
    assert all(mean[t][t] > 0 for t in range(4))  # a step on a task lowers its own loss
    cosine = report["mean"]["gradient_cosine"]
    assert all(cosine[t][t] == pytest.approx(1.0) for t in range(4))
    assert (tmp_path / "run" / "relations.png").stat().st_size > 0


def test_recording_does_not_change_the_run(tmp_path, table_csv):
    plain = polytask.train(_spec(table_csv), tmp_path / "plain").run
    recorded = polytask.train(_spec(table_csv, {"every": 1}), tmp_path / "recorded").run
    left, right = load_file(plain / "model.safetensors"), load_file(recorded / "model.safetensors")
    for key in left:
        assert torch.equal(left[key], right[key])
    assert not (plain / "relations.json").exists()


def test_resume_gives_the_same_record(tmp_path, table_csv):
    spec = _spec(table_csv, {"every": 1})
    full = polytask.train(spec, tmp_path / "full").run

    def interrupt(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        polytask.train(spec, tmp_path / "cut", callbacks=[interrupt])
    cut = fit(None, tmp_path / "cut", resume=True, progress=False)
    strip = lambda report: [  # noqa: E731
        {k: v for k, v in row.items() if k != "seconds"} for row in report["epochs"]
    ]
    expected = json.loads((full / "relations.json").read_text())
    actual = json.loads((cut / "relations.json").read_text())
    assert strip(actual) == strip(expected)


def test_bad_relations_options_are_named(table_csv):
    with pytest.raises(ConfigError, match=r"train\.relations\.every"):
        polytask.load_spec(_spec(table_csv, {"every": 0}))
    unknown = r"train\.relations\.evry: unknown key \(did you mean 'every'"
    with pytest.raises(ConfigError, match=unknown):
        polytask.load_spec(_spec(table_csv, {"evry": 3}))


def test_the_recorder_measures_with_the_batch_sample_weights(tmp_path, table, monkeypatch):
    """The trainer hands the batch's data.weight values to the recorder, which measures with
    them (cut to spec.rows rows as the batch is)."""
    import polytask.relations.recorder as recorder_module

    table["w"] = (table.index % 3).astype(float)  # 0, 1, 2: not the unweighted loss
    table.to_csv(tmp_path / "t.csv", index=False)
    seen = []
    measure = recorder_module.measure

    def spy(model, features, labels, tasks, lr, weights=None):
        seen.append((len(features), weights))
        return measure(model, features, labels, tasks, lr, weights)

    monkeypatch.setattr(recorder_module, "measure", spy)
    spec = base_spec(
        tmp_path / "t.csv",
        data={"weight": {"click": "w"}},
        train={"epochs": 1, "relations": {"every": 1, "rows": 40}},
    )
    polytask.train(spec, tmp_path / "run")
    assert seen
    for rows, weights in seen:
        assert rows <= 40 and set(weights) == {"click"} and len(weights["click"]) == rows
        assert set(weights["click"].tolist()) <= {0.0, 1.0, 2.0}
    assert 40 in {rows for rows, _ in seen}  # batches of 64 rows are cut to 40
