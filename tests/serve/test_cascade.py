"""The confidence cascade between two tiny runs on the same synthetic data (a shared_bottom
"slim" run and the session's MMoE "full" run): threshold 0 is the slim model, a threshold above
1 is the full model, the deferred share grows with the threshold, serve-time deferral agrees
with the curve, and the CLI writes its JSON and plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import polytask
from polytask.cli import app
from polytask.errors import PolytaskError
from polytask.serve.cascade import Cascade, confidence, run_cascade
from tests.conftest import base_spec


@pytest.fixture(scope="module")
def runs(trained_run, tmp_path_factory) -> dict:
    """The session run as full; a shared_bottom run on the same files as slim."""
    from polytask.config import load_spec
    from polytask.train.trainer import fit

    paths = trained_run["paths"]
    spec = base_spec(
        paths["train"],
        data={"valid": str(paths["valid"]), "test": str(paths["test"])},
        model={"arch": "shared_bottom", "embedding_dim": 2, "hidden": [4], "tower_hidden": [2]},
        train={"epochs": 2},
    )
    slim = fit(load_spec(spec), tmp_path_factory.mktemp("slim") / "run", progress=False)
    return {
        "slim": polytask.load(slim),
        "full": polytask.load(trained_run["run"]),
        "valid": trained_run["frames"]["valid"],
    }


@pytest.mark.parametrize("task", ["click", "segment"])
def test_threshold_zero_is_slim_and_above_one_is_full(runs, task):
    cascade = Cascade(runs["slim"], runs["full"], task)
    report = cascade.curve(runs["valid"], [0.0, 1.01])
    low, high = report["points"]
    metric = report["metric"]
    assert low["deferred_share"] == 0.0 and low["deferred_rows"] == 0
    assert low["metrics"] == report["slim_only"]
    assert high["deferred_share"] == 1.0 and high["deferred_rows"] == report["labelled_rows"]
    assert high["metrics"] == report["full_only"]
    assert metric == ("auc" if task == "click" else "accuracy")
    assert report["slim_only"][metric] != report["full_only"][metric]  # two different models


def test_deferred_share_is_monotone_in_the_threshold(runs):
    report = Cascade(runs["slim"], runs["full"], "click").curve(runs["valid"])
    thresholds = [p["threshold"] for p in report["points"]]
    shares = [p["deferred_share"] for p in report["points"]]
    assert len(thresholds) == 21 and thresholds[0] == 0.5 and thresholds[-1] == 1.0
    assert shares == sorted(shares)
    assert report["labelled_rows"] == int(runs["valid"]["clicked"].notna().sum())


def test_serve_time_cascade_defers_the_unsure_rows_to_the_full_model(runs):
    cascade = Cascade(runs["slim"], runs["full"], "segment")
    frame = runs["valid"]
    slim = cascade.probabilities(runs["slim"], cascade.slim_task, frame)
    full = cascade.probabilities(runs["full"], cascade.full_task, frame)
    threshold = float(np.median(confidence(slim)))
    outputs, deferred = cascade.predict(frame, threshold)
    assert deferred.tolist() == (confidence(slim) < threshold).tolist()
    assert 0 < deferred.sum() < len(frame)
    np.testing.assert_allclose(outputs[deferred], full[deferred], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(outputs[~deferred], slim[~deferred], rtol=1e-6)


def test_confidence_of_binary_and_multiclass():
    np.testing.assert_allclose(confidence(np.array([0.1, 0.5, 0.8])), [0.9, 0.5, 0.8])
    np.testing.assert_allclose(confidence(np.array([[0.2, 0.7, 0.1], [0.4, 0.3, 0.3]])), [0.7, 0.4])


def test_tasks_that_cannot_cascade_are_refused(runs):
    with pytest.raises(PolytaskError, match="regression"):
        Cascade(runs["slim"], runs["full"], "spend")
    with pytest.raises(PolytaskError, match="did you mean 'click'"):
        Cascade(runs["slim"], runs["full"], "clik")


def test_run_cascade_writes_json_and_png(runs, tmp_path):
    report = run_cascade(
        runs["slim"].run, runs["full"].run, "click", runs["valid"], tmp_path / "out", [0.5, 0.9]
    )
    saved = json.loads(Path(report["files"]["json"]).read_text())
    assert [p["threshold"] for p in saved["points"]] == [0.5, 0.9]
    assert Path(report["files"]["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_cascade_on_the_full_runs_split(runs, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["cascade", str(runs["slim"].run), str(runs["full"].run), "--task", "click"]
    result = runner.invoke(app, [*args, "--split", "valid", "--out", str(out), "--steps", "6"])
    assert result.exit_code == 0, result.output
    assert "deferred" in result.output
    assert len(json.loads((out / "cascade.json").read_text())["points"]) == 6
    assert (out / "cascade.png").is_file()
    bad = runner.invoke(app, [*args[:-1], "spend", "--split", "valid", "--out", str(out)])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert "regression" in bad.output
