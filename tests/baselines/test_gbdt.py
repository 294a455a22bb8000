"""The per-task GBDT baseline: same rows and metrics as a run, an ordinary result folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor

from polytask.baselines.gbdt import design_matrix, is_baseline, train_baseline
from polytask.config import load_spec
from polytask.train.prepare import prepare
from tests.cli_helpers import assert_user_error, invoke
from tests.conftest import base_spec, write_yaml


def test_result_folder_matches_a_runs_shape(tmp_path, table_csv):
    spec = load_spec(base_spec(table_csv))
    folder = train_baseline(spec, tmp_path / "gbdt", library="sklearn")
    assert is_baseline(folder)
    final = json.loads((folder / "metrics.json").read_text())
    assert set(final) == {"valid", "test"}
    assert set(final["test"]) == {"click", "segment", "spend", "tags"}
    assert set(final["test"]["click"]) == {"auc", "logloss", "accuracy", "loss"}
    assert set(final["test"]["tags"]) == {"mean_auc", "loss"}
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["library"] == "sklearn"
    assert summary["rows"] == {"train": 144, "valid": 48, "test": 48}


def test_regression_metric_is_that_of_the_same_model_fitted_by_hand(tmp_path, table_csv):
    """The baseline's spend RMSE equals a HistGradientBoostingRegressor fitted on the same
    prepared rows and early-stopped on the same validation rows, scored by hand."""
    spec = load_spec(base_spec(table_csv))
    folder = train_baseline(spec, tmp_path / "gbdt", library="sklearn")
    prepared = prepare(spec)
    task = next(t for t in prepared.tasks if t.name == "spend")
    train, valid, test = (prepared.splits[s] for s in ("train", "valid", "test"))
    x, y = design_matrix(train.features), train.labels["spend"].numpy()
    xv, yv = design_matrix(valid.features), valid.labels["spend"].numpy()
    keep, keep_v = ~np.isnan(y), ~np.isnan(yv)
    mask = np.array([True, True] + [False] * (x.shape[1] - 2))
    model = HistGradientBoostingRegressor(
        max_iter=500,
        n_iter_no_change=20,
        early_stopping=True,
        categorical_features=mask,
        random_state=0,
    ).fit(x[keep], y[keep], X_val=xv[keep_v], y_val=yv[keep_v])
    yt = test.labels["spend"].numpy()
    labelled = ~np.isnan(yt)
    predicted = model.predict(design_matrix(test.features))[labelled] * task.target_std
    truth = yt[labelled] * task.target_std
    expected = float(np.sqrt(np.mean((predicted - truth) ** 2)))
    final = json.loads((folder / "metrics.json").read_text())
    assert final["test"]["spend"]["rmse"] == pytest.approx(expected, rel=1e-5)


def test_cli_baseline_and_evaluate_beside(tmp_path, table_csv, trained_run):
    config = trained_run["config"]
    result = invoke("baseline", config, "-o", tmp_path / "gbdt", "--library", "sklearn")
    assert result.exit_code == 0, result.output
    assert "baseline saved" in result.output
    result = invoke(
        "evaluate", trained_run["run"], "--split", "test", "--beside", tmp_path / "gbdt", "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    cell = report["beside"]["click"]["auc"]
    assert cell["difference"] == pytest.approx(cell["run"] - cell["baseline"])
    baseline_auc = json.loads((tmp_path / "gbdt" / "metrics.json").read_text())["test"]["click"]
    assert cell["baseline"] == pytest.approx(baseline_auc["auc"])
    # a baseline folder also serves as the Delta-m reference
    result = invoke(
        "evaluate", trained_run["run"], "--split", "test", "--baseline", tmp_path / "gbdt"
    )
    assert result.exit_code == 0, result.output
    assert "delta_m" in result.output


def test_user_errors(tmp_path, table_csv, trained_run):
    config = write_yaml(tmp_path / "spec.yaml", base_spec(table_csv))
    (tmp_path / "taken").mkdir()
    assert_user_error(invoke("baseline", config, "-o", tmp_path / "taken"), "already exists")
    assert_user_error(
        invoke("baseline", config, "-o", tmp_path / "x", "--library", "xgb"), "--library"
    )
    train_baseline(load_spec(config), tmp_path / "gbdt", library="sklearn")
    assert_user_error(
        invoke("predict", tmp_path / "gbdt", trained_run["paths"]["test"]), "baseline"
    )
    assert_user_error(
        invoke(
            "evaluate",
            trained_run["run"],
            "--data",
            trained_run["paths"]["test"],
            "--beside",
            tmp_path / "gbdt",
        ),
        "--split",
    )


def test_lightgbm_where_installed(tmp_path, table_csv):
    import importlib.util

    from polytask.errors import PolytaskError

    spec = load_spec(base_spec(table_csv))
    if importlib.util.find_spec("lightgbm") is None:
        with pytest.raises(PolytaskError, match="LightGBM is not installed"):
            train_baseline(spec, tmp_path / "lgbm", library="lightgbm")
        return
    folder = train_baseline(spec, tmp_path / "lgbm", library="auto")
    assert json.loads((folder / "summary.json").read_text())["library"] == "lightgbm"


def test_a_streamed_spec_is_refused_in_one_line(tmp_path):
    from polytask.baselines.gbdt import fit_tasks
    from polytask.config import parse_spec
    from polytask.errors import ConfigError
    from tests.conftest import base_spec

    spec = parse_spec(base_spec(tmp_path / "t.parquet", data={"stream": True, "split": {}}))
    with pytest.raises(ConfigError, match=r"data\.stream: the baseline fits trees on a table held"):
        fit_tasks(spec, "sklearn")
