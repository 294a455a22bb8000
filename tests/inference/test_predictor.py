"""A finished run, loaded: predictions on raw rows, evaluation, and refusing unfinished runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import polytask
from polytask.artifacts import run_dir as rd
from polytask.artifacts.atomic import write_atomic
from polytask.errors import DataError, PolytaskError


@pytest.fixture(scope="module")
def predictor(trained_run):
    return polytask.load(trained_run["run"])


def raw_rows() -> pd.DataFrame:
    """Rows as a user might send them: unseen categories, blanks, NaN, and no 'x2' column."""
    return pd.DataFrame(
        {
            "color": ["red", "purple", "", None, "blue", "green"],
            "city": ["rome", "paris", "atlantis", "oslo", np.nan, ""],
            "x1": [0.5, np.nan, -1.0, 2.0, np.nan, 0.0],
            "count": [3, 7, np.nan, 1, 0, 9],
        },
        index=[10, 11, 12, 13, 14, 15],
    )


def test_predict_raw_rows_with_unseen_and_missing_values(predictor):
    frame = raw_rows()
    predictions = predictor.predict(frame)
    assert len(predictions) == len(frame)
    assert list(predictions.index) == list(frame.index)
    assert list(predictions.columns) == [
        "click",
        "segment",
        "segment_p_high",
        "segment_p_low",
        "segment_p_mid",
        "spend",
        "tags_tag_a",
        "tags_tag_b",
    ]
    numbers = predictions.drop(columns=["segment"]).to_numpy(dtype=float)
    assert np.isfinite(numbers).all()
    for column in ("click", "tags_tag_a", "tags_tag_b"):
        assert predictions[column].between(0, 1).all()
    probabilities = predictions[["segment_p_high", "segment_p_low", "segment_p_mid"]]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    best = probabilities.to_numpy().argmax(axis=1)
    assert list(predictions["segment"]) == [["high", "low", "mid"][i] for i in best]


def test_regression_predictions_are_on_the_user_scale(predictor, trained_run):
    frame = trained_run["frames"]["test"]
    spend = predictor.predict(frame)["spend"]
    # the target is centred near 100 with a spread of tens; standardised outputs would not be
    assert 60 < spend.mean() < 140
    assert np.corrcoef(spend[frame["spend"].notna()], frame["spend"].dropna())[0, 1] > 0.5


def test_unseen_category_predicts_like_a_missing_one(predictor):
    frame = raw_rows().iloc[:1]
    unseen = frame.assign(color="never-seen-colour")
    missing = frame.assign(color=None)
    pd.testing.assert_frame_equal(predictor.predict(unseen), predictor.predict(missing))
    assert not predictor.predict(frame).equals(predictor.predict(unseen))


def test_predictions_do_not_depend_on_batching_or_order(predictor, trained_run):
    frame = trained_run["frames"]["test"]
    whole = predictor.predict(frame)
    pd.testing.assert_frame_equal(predictor.predict(frame, batch_size=7), whole)
    reversed_rows = frame.iloc[::-1]
    pd.testing.assert_frame_equal(predictor.predict(reversed_rows).loc[whole.index], whole)


def test_predict_needs_rows(predictor):
    with pytest.raises(DataError, match="no rows"):
        predictor.predict(raw_rows().iloc[:0])


def test_predict_names_a_bad_numeric_row(predictor):
    frame = raw_rows().reset_index(drop=True)
    frame["x1"] = frame["x1"].astype(object)
    frame.loc[3, "x1"] = "twelve"
    with pytest.raises(DataError, match=r"column 'x1', row 4: 'twelve' is not a number"):
        predictor.predict(frame)


def test_evaluate_on_the_test_file_reproduces_the_training_report(predictor, trained_run):
    report = predictor.evaluate(trained_run["frames"]["test"])
    final = json.loads((trained_run["run"] / "metrics.json").read_text())["test"]
    for task, metrics in final.items():
        for metric, value in metrics.items():
            assert report["metrics"][task][metric] == pytest.approx(value, rel=1e-5), metric
    summary = predictor.summary()
    assert report["score"]["value"] == pytest.approx(summary["score"]["test"]["value"])


def test_evaluate_rejects_labels_that_do_not_fit(predictor, trained_run):
    frame = trained_run["frames"]["test"].copy()
    frame.loc[7, "clicked"] = 5
    with pytest.raises(DataError, match="holds 5 at row 8"):
        predictor.evaluate(frame)


def test_predictor_facts(predictor, trained_run):
    assert predictor.task_names == ["click", "segment", "spend", "tags"]
    assert "mmoe" in repr(predictor)
    assert predictor.run == trained_run["run"]
    assert not predictor.model.training


def test_load_refuses_an_unfinished_run(tmp_path: Path, trained_run):
    partial = tmp_path / "run.partial"
    shutil.copytree(trained_run["run"], partial)
    (partial / rd.SUMMARY).unlink()
    (partial / rd.CHECKPOINT).write_bytes(b"stands for an epoch checkpoint")
    with pytest.raises(PolytaskError, match=r"did not finish.*--resume"):
        polytask.load(tmp_path / "run")
    with pytest.raises(PolytaskError, match="--resume"):
        polytask.load(partial)


def test_no_resume_advice_before_the_first_checkpoint(tmp_path: Path, trained_run):
    """A run killed during its first epoch has nothing to resume: say so, not --resume."""
    partial = tmp_path / "run.partial"
    shutil.copytree(trained_run["run"], partial)
    (partial / rd.SUMMARY).unlink()
    with pytest.raises(PolytaskError, match="nothing to resume") as caught:
        polytask.load(tmp_path / "run")
    assert "--resume" not in str(caught.value)


def test_load_of_nothing(tmp_path: Path):
    with pytest.raises(PolytaskError, match="no finished run"):
        polytask.load(tmp_path / "missing")


def test_write_atomic_leaves_no_half_file(tmp_path: Path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def fail(temp: Path) -> None:
        temp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(target, fail)
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_json_files_hold_no_nan(tmp_path: Path):
    rd.save_json(tmp_path, "x.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": 2.5})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [1.0, None], "c": 2.5}
