"""Evaluation: metrics of a trained run against sklearn, and the overall score (Delta-m)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm
from torch import nn

import polytask
from polytask.config import TaskSpec
from polytask.features import Features
from polytask.inference.evaluation import (
    delta_m,
    evaluate,
    mean_normalised,
    overall_score,
    predict_logits,
)
from polytask.model import ModelOutput
from polytask.tasks import Task
from polytask.train.trainer import fit
from tests.conftest import base_spec, write_yaml


def task(name: str, kind: str, metrics: list[str], **extra) -> Task:
    target = {"targets": ["a", "b"]} if kind == "multilabel" else {"target": name}
    return Task(TaskSpec(name=name, kind=kind, metrics=metrics, **target), out_dim=1, **extra)


# ---------------------------------------------------------------------- Delta-m
def test_delta_m_equals_the_formula_on_hand_made_numbers():
    tasks = [
        task("click", "binary", ["auc", "logloss"]),
        task("spend", "regression", ["rmse", "r2"]),
    ]
    ours = {"click": {"auc": 0.80, "logloss": 0.45}, "spend": {"rmse": 9.0, "r2": 0.50}}
    base = {"click": {"auc": 0.75, "logloss": 0.50}, "spend": {"rmse": 10.0, "r2": 0.40}}
    # click: auc +0.05/0.75, logloss (lower is better) -(0.45-0.50)/0.50 = +0.1
    click = (0.05 / 0.75 + 0.1) / 2
    # spend: rmse -(9-10)/10 = +0.1, r2 +0.1/0.4 = +0.25
    spend = (0.1 + 0.25) / 2
    assert delta_m(ours, base, tasks) == pytest.approx(100 * (click + spend) / 2)


def test_delta_m_is_zero_against_itself_and_negative_when_worse():
    tasks = [task("click", "binary", ["auc", "logloss"])]
    results = {"click": {"auc": 0.7, "logloss": 0.6}}
    assert delta_m(results, results, tasks) == 0.0
    worse = {"click": {"auc": 0.63, "logloss": 0.66}}
    assert delta_m(worse, results, tasks) == pytest.approx(-10.0)


def test_delta_m_skips_metrics_it_cannot_compare():
    tasks = [task("a", "regression", ["rmse", "r2"]), task("b", "binary", ["auc"])]
    ours = {"a": {"rmse": 2.0, "r2": math.nan}, "b": {"auc": 0.9}}
    base = {"a": {"rmse": 4.0, "r2": 0.5}}  # task b missing from the baseline
    assert delta_m(ours, base, tasks) == pytest.approx(50.0)
    zero_base = {"a": {"rmse": 0.0, "r2": 0.5}}
    nothing_comparable = {"a": {"rmse": 1.0, "r2": math.nan}, "b": {"auc": 0.9}}
    assert math.isnan(delta_m(nothing_comparable, zero_base, tasks))


def test_mean_normalised_is_the_mean_primary_skill():
    tasks = [task("c", "binary", ["auc"]), task("s", "regression", ["rmse"])]
    y = np.array([1.0, 2.0, 3.0, 5.0])
    labels = {"c": torch.tensor([0.0, 1.0]), "s": torch.from_numpy(y)}
    results = {"c": {"auc": 0.8}, "s": {"rmse": float(np.std(y)) / 2}}
    # auc 0.8 -> 2 * 0.8 - 1 = 0.6 (a constant scores 0.5 -> 0); rmse at half the std -> 0.5
    assert mean_normalised(results, labels, tasks) == pytest.approx((0.6 + 0.5) / 2)
    score = overall_score(results, labels, tasks, baseline=None)
    assert score["name"] == "mean_normalised" and score["baseline"] is None
    with_base = overall_score(results, labels, tasks, baseline=results, baseline_path="b")
    assert with_base["name"] == "delta_m" and with_base["value"] == 0.0
    assert with_base["unit"] == "percent" and with_base["baseline"] == "b"


def test_skill_scores_match_hand_computed_values():
    """Every metric on one scale where the best constant predictor scores 0 and a perfect
    one 1 (the table in Task.normalised), computed by hand on small label sets."""
    binary = task("c", "binary", ["accuracy", "auc", "logloss"])
    y = np.array([0.0, 0.0, 0.0, 1.0, np.nan])  # majority share 3/4
    # accuracy 0.875: (0.875 - 0.75) / (1 - 0.75) = 0.5
    assert binary.normalised("accuracy", 0.875, y) == pytest.approx(0.5)
    assert binary.normalised("accuracy", 0.75, y) == pytest.approx(0.0)  # the constant
    assert binary.normalised("auc", 0.5, y) == 0.0 and binary.normalised("auc", 1.0, y) == 1.0
    # logloss of the base rate 1/4: -(3 ln 0.75 + ln 0.25) / 4
    base = -(3 * math.log(0.75) + math.log(0.25)) / 4
    assert binary.normalised("logloss", base / 4, y) == pytest.approx(0.75)
    multi = Task(TaskSpec(name="m", kind="multiclass", target="m"), out_dim=3, classes=[0, 1, 2])
    labels = np.array([0.0, 0.0, 1.0, 2.0])  # share of class 0: s = 1/2, K = 3
    constant_f1 = (2 * 0.5 / 1.5) / 3  # F1 of class 0 when always predicted, others 0
    assert multi.normalised("macro_f1", constant_f1, labels) == pytest.approx(0.0)
    assert multi.normalised("macro_f1", 1.0, labels) == pytest.approx(1.0)
    expected = (0.6 - constant_f1) / (1 - constant_f1)
    assert multi.normalised("macro_f1", 0.6, labels) == pytest.approx(expected)
    regression = task("r", "regression", ["mae"])
    values = np.array([1.0, 2.0, 4.0, 10.0])  # median 3: mean |y - 3| = (2 + 1 + 1 + 7) / 4
    assert regression.normalised("mae", 2.75 / 2, values) == pytest.approx(0.5)
    assert regression.normalised("r2", -0.2, values) == -0.2
    assert math.isnan(binary.normalised("accuracy", 1.0, np.array([1.0, 1.0])))  # one class


def test_constant_predictor_scores_zero_on_every_metric():
    """From predictions, through Task.metrics: a constant predictor is 0 whatever the metric,
    which is what lets early stopping average AUC with RMSE."""
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(float)
    binary = task("c", "binary", ["auc", "accuracy", "logloss"])
    constant = np.full(len(y), y.mean())
    for metric, value in binary.metrics(constant, y).items():
        assert binary.normalised(metric, value, y) == pytest.approx(0.0, abs=1e-9), metric
    target = rng.normal(size=200)
    regression = task("r", "regression", ["rmse", "r2"])
    for metric, value in regression.metrics(np.full(200, target.mean()), target).items():
        assert regression.normalised(metric, value, target) == pytest.approx(0.0, abs=1e-9)
    mae = task("r", "regression", ["mae"])
    value = mae.metrics(np.full(200, np.median(target)), target)["mae"]
    assert mae.normalised("mae", value, target) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------- evaluate
class FixedLogits(nn.Module):
    """A stand-in model returning stored logits for the rows it is given."""

    def __init__(self, logits: list[torch.Tensor]) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, features: Features) -> ModelOutput:
        rows = features.numeric[:, 0].long()
        return ModelOutput([block[rows] for block in self.logits])


def test_evaluate_reports_regression_metrics_on_the_user_scale():
    spend = task("spend", "regression", ["rmse", "mae", "r2"], target_mean=100.0, target_std=20.0)
    y_user = np.array([80.0, 110.0, np.nan, 130.0, 95.0])
    p_user = np.array([85.0, 100.0, 50.0, 120.0, 99.0])
    logits = torch.tensor((p_user - 100.0) / 20.0, dtype=torch.float32).unsqueeze(1)
    encoded = torch.tensor((y_user - 100.0) / 20.0, dtype=torch.float32)
    features = Features(torch.zeros(5, 0, dtype=torch.int64), torch.arange(5.0).unsqueeze(1))
    results = evaluate(FixedLogits([logits]), features, {"spend": encoded}, [spend], batch_size=2)
    mask = ~np.isnan(y_user)
    error = p_user[mask] - y_user[mask]
    assert results["spend"]["rmse"] == pytest.approx(np.sqrt(np.mean(error**2)), rel=1e-5)
    assert results["spend"]["mae"] == pytest.approx(np.mean(np.abs(error)), rel=1e-5)
    assert results["spend"]["r2"] == pytest.approx(
        skm.r2_score(y_user[mask], p_user[mask]), rel=1e-5
    )
    # the loss is on the standardised scale the model is trained on
    expected_loss = np.mean(((p_user[mask] - y_user[mask]) / 20.0) ** 2)
    assert results["spend"]["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_predict_logits_batches_and_restores_the_mode():
    torch.manual_seed(0)
    model = FixedLogits([torch.randn(7, 3)])
    model.train()
    features = Features(torch.zeros(7, 0, dtype=torch.int64), torch.arange(7.0).unsqueeze(1))
    (in_threes,) = predict_logits(model, features, batch_size=3)
    (at_once,) = predict_logits(model, features, batch_size=100)
    torch.testing.assert_close(in_threes, model.logits[0])
    torch.testing.assert_close(at_once, model.logits[0])
    assert model.training


# ---------------------------------------------------------------------- a trained run
def test_run_metrics_match_sklearn_on_the_labelled_test_rows(trained_run):
    """metrics.json against metrics recomputed from the run's predictions on the raw test
    file, with sklearn / numpy, on each task's labelled rows only."""
    frame: pd.DataFrame = trained_run["frames"]["test"]
    final = json.loads((trained_run["run"] / "metrics.json").read_text())["test"]
    predictions = polytask.load(trained_run["run"]).predict(frame)

    labelled = frame["clicked"].notna()
    y, p = frame.loc[labelled, "clicked"], predictions.loc[labelled, "click"]
    assert final["click"]["auc"] == pytest.approx(skm.roc_auc_score(y, p), rel=1e-6)
    assert final["click"]["logloss"] == pytest.approx(skm.log_loss(y, p), rel=1e-4)
    assert final["click"]["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5))

    labelled = frame["segment"].notna()
    y, p = frame.loc[labelled, "segment"], predictions.loc[labelled, "segment"]
    assert final["segment"]["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert final["segment"]["macro_f1"] == pytest.approx(
        skm.f1_score(y, p, average="macro", labels=["high", "low", "mid"], zero_division=0)
    )

    labelled = frame["spend"].notna()
    y, p = frame.loc[labelled, "spend"], predictions.loc[labelled, "spend"]
    assert y.std() > 10  # far from the standardised scale: the test would see a scale slip
    assert final["spend"]["rmse"] == pytest.approx(np.sqrt(np.mean((p - y) ** 2)), rel=1e-4)
    assert final["spend"]["mae"] == pytest.approx(np.mean(np.abs(p - y)), rel=1e-4)
    assert final["spend"]["r2"] == pytest.approx(skm.r2_score(y, p), rel=1e-4, abs=1e-5)

    aucs = []
    for column in ("tag_a", "tag_b"):
        labelled = frame[column].notna()
        aucs.append(
            skm.roc_auc_score(
                frame.loc[labelled, column], predictions.loc[labelled, f"tags_{column}"]
            )
        )
    assert final["tags"]["mean_auc"] == pytest.approx(np.mean(aucs), rel=1e-6)


def test_training_against_a_single_task_baseline_reports_delta_m(tmp_path: Path, table_csv):
    single = fit(
        polytask.load_spec(base_spec(table_csv, model={"arch": "single"})),
        tmp_path / "single",
        progress=False,
    )
    config = write_yaml(tmp_path / "mtl.yaml", base_spec(table_csv, train={"baseline": "single"}))
    run = fit(polytask.load_spec(config), tmp_path / "mtl", progress=False)
    summary = json.loads((run / "summary.json").read_text())
    ours = json.loads((run / "metrics.json").read_text())
    theirs = json.loads((single / "metrics.json").read_text())
    specs = polytask.load_spec(config).tasks
    for split in ("valid", "test"):
        score = summary["score"][split]
        assert score["name"] == "delta_m"
        assert score["unit"] == "percent"
        assert score["baseline"] == str(single)
        per_task = []
        for spec in specs:
            gains = []
            for metric in spec.metrics:
                a, b = ours[split][spec.name][metric], theirs[split][spec.name][metric]
                higher = metric not in ("logloss", "rmse", "mae")
                gains.append((a - b) / abs(b) * (1 if higher else -1))
            per_task.append(np.mean(gains))
        assert score["value"] == pytest.approx(100 * np.mean(per_task), rel=1e-9)


def test_a_baseline_that_did_not_finish_is_an_error(tmp_path: Path, table_csv):
    with pytest.raises(polytask.PolytaskError, match="no finished run"):
        fit(
            polytask.load_spec(base_spec(table_csv, train={"baseline": str(tmp_path / "none")})),
            tmp_path / "run",
            progress=False,
        )
    assert not (tmp_path / "run.partial").exists()
