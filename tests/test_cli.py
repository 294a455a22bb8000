"""The ``polytask`` command: user mistakes are one line and exit code 2, and the subcommands
work end to end on a finished run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.cli_helpers import assert_user_error, invoke
from tests.conftest import base_spec, make_table, write_yaml


def assert_no_run_left(folder: Path, out: Path) -> None:
    assert not out.exists()
    assert not out.with_name(out.name + ".partial").exists()
    assert not [p for p in folder.rglob("*") if p.name.endswith(".partial")]


# ---------------------------------------------------------------------- config errors
def test_train_with_a_misspelt_key(tmp_path: Path, table_csv):
    raw = base_spec(table_csv)
    raw["train"]["epoch"] = 3
    config = write_yaml(tmp_path / "bad.yaml", raw)
    line = assert_user_error(
        invoke("train", config, "--out", tmp_path / "run"),
        "train.epoch",
        "did you mean 'epochs'",
        "allowed:",
    )
    assert "batch_size" in line
    assert_no_run_left(tmp_path, tmp_path / "run")


def test_train_without_a_config_file(tmp_path: Path):
    assert_user_error(invoke("train", tmp_path / "nope.yaml"), "config file not found")


# ---------------------------------------------------------------------- bad data
def _table_with(tmp_path: Path, change) -> Path:
    frame = make_table(n=60)
    frame = change(frame) if change is not None else frame
    path = tmp_path / "data.csv"
    if isinstance(frame, str):
        path.write_text(frame)
    else:
        frame.to_csv(path, index=False)
    return path


def _label_three(frame):
    frame["clicked"] = frame["clicked"].fillna(0)
    frame.loc[36, "clicked"] = 3
    return frame


def _no_labels(frame):
    frame["spend"] = np.nan
    return frame


def _bad_number(frame):
    frame["x1"] = frame["x1"].astype(object)
    frame.loc[44, "x1"] = "abc"
    return frame


def _bad_inferred_number(frame):
    frame["x2"] = frame["x2"].round(2).astype(str)
    frame.loc[19, "x2"] = "n.a."
    return frame


def _unknown_arch(raw):
    raw["model"]["arch"] = "mmoee"


def _unknown_kind(raw):
    raw["tasks"][0]["kind"] = "binry"


def _declare_numeric(raw):
    raw["data"]["numeric"] = ["x1", "x2", "count"]


@pytest.mark.parametrize(
    ("table_change", "spec_change", "fragments"),
    [
        ("missing", None, ["data file not found", "data.csv"]),
        (lambda f: "color,x1,clicked\n", None, ["has a header but no rows"]),
        (lambda f: f.drop(columns=["clicked"]), None, ["target column 'clicked'", "not in"]),
        (_label_three, None, ["task 'click'", "holds 3 at row 37", "0 or 1"]),
        (_no_labels, None, ["target column 'spend' has no labels"]),
        (_bad_number, _declare_numeric, ["column 'x1', row 45: 'abc' is not a number"]),
        (_bad_inferred_number, None, ["column 'x2', row 20: 'n.a.' is not a number"]),
        (None, _unknown_arch, ["model.arch", "unknown architecture 'mmoee'", "'mmoe'"]),
        (None, _unknown_kind, ["tasks.0.kind", "binry", "'binary'"]),
    ],
    ids=[
        "missing-file",
        "header-only",
        "missing-target",
        "binary-label-3",
        "no-labels",
        "bad-declared-numeric",
        "bad-inferred-numeric",
        "unknown-arch",
        "unknown-kind",
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    tmp_path: Path, table_change, spec_change, fragments
):
    if table_change == "missing":
        data = tmp_path / "data.csv"
    else:
        data = _table_with(tmp_path, table_change)
    raw = base_spec(data)
    if spec_change is not None:
        spec_change(raw)
    config = write_yaml(tmp_path / "cfg.yaml", raw)
    out = tmp_path / "runs" / "run"
    assert_user_error(invoke("train", config, "--out", out, "--quiet"), *fragments)
    assert_no_run_left(tmp_path, out)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_resume_and_config_together_is_an_error(tmp_path: Path):
    result = invoke("train", tmp_path / "c.yaml", "--resume", tmp_path / "run")
    assert_user_error(result, "--resume")
    assert_user_error(invoke("train"), "CONFIG")


def test_resume_of_nothing(tmp_path: Path):
    assert_user_error(invoke("train", "--resume", tmp_path / "run"), "no checkpoint")


# ---------------------------------------------------------------------- happy paths
def test_train_then_info(tmp_path: Path, table_csv):
    config = write_yaml(tmp_path / "cfg.yaml", base_spec(table_csv, train={"epochs": 1}))
    out = tmp_path / "run"
    result = invoke("train", config, "--out", out, "--seed", "7", "--quiet")
    assert result.exit_code == 0, result.output
    assert (out / "summary.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == 7
    assert_user_error(invoke("train", config, "--out", out, "--quiet"), "--overwrite")
    assert invoke("train", config, "--out", out, "--overwrite", "--quiet").exit_code == 0
    info = invoke("info", out)
    assert info.exit_code == 0, info.output
    facts = json.loads(info.stdout)
    assert facts["tasks"] == {
        "click": "binary",
        "segment": "multiclass",
        "spend": "regression",
        "tags": "multilabel",
    }
    assert facts["inputs"]["categorical"] == ["color", "city"]


def test_train_prints_progress_and_a_report(tmp_path: Path, table_csv):
    config = write_yaml(tmp_path / "cfg.yaml", base_spec(table_csv, train={"epochs": 2}))
    result = invoke("train", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "epoch   2" in result.output
    assert "mean_normalised" in result.output
    assert "run saved to" in result.output


def test_evaluate_on_a_file(trained_run):
    run, test_csv = trained_run["run"], trained_run["paths"]["test"]
    result = invoke("evaluate", run, "--data", test_csv)
    assert result.exit_code == 0, result.output
    for name in ("click", "spend", "tags", "mean_normalised", "(120 rows)"):
        assert name in result.stdout
    as_json = invoke("evaluate", run, "--data", test_csv, "--json")
    report = json.loads(as_json.stdout)
    final = json.loads((run / "metrics.json").read_text())["test"]
    assert report["metrics"]["click"]["auc"] == pytest.approx(final["click"]["auc"])
    assert report["score"]["name"] == "mean_normalised"


def test_evaluate_on_the_runs_own_split(trained_run):
    run = trained_run["run"]
    final = json.loads((run / "metrics.json").read_text())
    for split in ("test", "valid"):
        result = invoke("evaluate", run, "--split", split, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["metrics"]["spend"]["rmse"] == pytest.approx(final[split]["spend"]["rmse"])
        assert report["metrics"]["click"]["auc"] == pytest.approx(final[split]["click"]["auc"])
    against_itself = invoke("evaluate", run, "--split", "test", "--baseline", run, "--json")
    score = json.loads(against_itself.stdout)["score"]
    assert score["name"] == "delta_m" and score["value"] == pytest.approx(0.0)


def test_evaluate_mistakes(trained_run, tmp_path: Path):
    run = trained_run["run"]
    assert_user_error(invoke("evaluate", run), "exactly one of --data")
    both = invoke("evaluate", run, "--data", trained_run["paths"]["test"], "--split", "test")
    assert_user_error(both, "exactly one of --data")
    assert_user_error(invoke("evaluate", run, "--split", "train"), "--split must be")
    assert_user_error(
        invoke("evaluate", tmp_path / "nothing", "--split", "test"), "no finished run"
    )


def test_predict_to_a_csv_file(trained_run, tmp_path: Path):
    rows = make_table(n=25, seed=9).drop(columns=["clicked", "segment", "spend", "x2"])
    rows.loc[0, "color"] = "purple"
    rows.loc[1, "city"] = ""
    rows.loc[2, "x1"] = np.nan
    rows.to_csv(tmp_path / "rows.csv", index=False)
    out = tmp_path / "pred.csv"
    result = invoke("predict", trained_run["run"], tmp_path / "rows.csv", "-o", out)
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(out)
    assert len(predictions) == 25
    assert {"click", "segment", "spend", "tags_tag_a", "tags_tag_b"} <= set(predictions.columns)
    assert np.isfinite(predictions.drop(columns=["segment"]).to_numpy(dtype=float)).all()
    assert set(predictions["segment"]) <= {"high", "low", "mid"}


def test_predict_to_stdout_parquet_and_keep(trained_run, tmp_path: Path):
    trained_run["frames"]["test"].head(8).to_parquet(tmp_path / "rows.parquet", index=False)
    result = invoke("predict", trained_run["run"], tmp_path / "rows.parquet", "--keep", "color")
    assert result.exit_code == 0, result.output
    from io import StringIO

    printed = pd.read_csv(StringIO(result.stdout))
    assert len(printed) == 8 and printed.columns[0] == "color"
    assert list(printed["color"]) == list(trained_run["frames"]["test"]["color"].head(8))
    out = tmp_path / "pred.parquet"
    assert (
        invoke("predict", trained_run["run"], tmp_path / "rows.parquet", "-o", out).exit_code == 0
    )
    np.testing.assert_allclose(pd.read_parquet(out)["click"], printed["click"], rtol=1e-5)
    missing = invoke("predict", trained_run["run"], tmp_path / "rows.parquet", "--keep", "nope")
    assert_user_error(missing, "--keep names column 'nope'")
    assert_user_error(
        invoke("predict", trained_run["run"], tmp_path / "none.csv"), "data file not found"
    )


def test_strategies_lists_every_strategy_and_its_options():
    from polytask.grow.strategies import STRATEGIES
    from tests.cli_helpers import invoke

    result = invoke("strategies")
    assert result.exit_code == 0, result.output
    for name in STRATEGIES.names():
        assert name in result.output
    assert "lambda" in result.output and "rows_per_task" in result.output
