"""The flat forms a tracker records: spec parameters and epoch metrics."""

from __future__ import annotations

import math

from polytask.track.flatten import epoch_metrics, final_metrics, flatten_spec, safe_key


def test_spec_flattens_to_dotted_keys():
    spec = {
        "model": {"arch": "mmoe", "hidden": [16, 8], "options": {}},
        "tasks": [{"name": "a", "kind": "binary"}, {"name": "b", "kind": "regression"}],
        "train": {"lr": 0.002, "baseline": None, "early_stopping": {"patience": 4}},
    }
    assert flatten_spec(spec) == {
        "model.arch": "mmoe",
        "model.hidden": "[16, 8]",
        "model.options": "{}",
        "tasks.0.name": "a",
        "tasks.0.kind": "binary",
        "tasks.1.name": "b",
        "tasks.1.kind": "regression",
        "train.lr": "0.002",
        "train.baseline": "null",
        "train.early_stopping.patience": "4",
    }


def test_keys_mlflow_rejects_are_replaced():
    assert safe_key("valid/click (%)/auc") == "valid/click ___/auc"
    assert safe_key("valid/città/auc") == "valid/città/auc"  # \w is Unicode-aware, as MLflow's


def test_epoch_row_to_metrics_skips_missing_and_nan():
    row = {
        "epoch": 3,
        "train_loss": 0.5,
        "train_task_loss": {"a": 0.4, "b": math.nan},
        "lr": 0.01,
        "seconds": 1.5,
        "rows_per_second": 100.0,
        "task_weights": {"a": 0.7, "b": 0.3, "c": 1.0},
        "gradient_cosine": [[1.0, -0.2, 0.1], [-0.2, 1.0, 0.5], [0.1, 0.5, 1.0]],
        "conflict_rate": 1 / 3,
        "valid": {"a": {"auc": 0.8, "loss": 0.3}, "b": {"rmse": None}},
        "monitor": 0.6,
        "best": True,
    }
    assert epoch_metrics(row) == {
        "train_loss": 0.5,
        "lr": 0.01,
        "seconds": 1.5,
        "rows_per_second": 100.0,
        "monitor": 0.6,
        "train_loss/a": 0.4,
        "valid/a/auc": 0.8,
        "valid/a/loss": 0.3,
        "task_weight/a": 0.7,
        "task_weight/b": 0.3,
        "task_weight/c": 1.0,
        "conflict_rate": 1 / 3,
        "gradient_cosine/a/b": -0.2,
        "gradient_cosine/a/c": 0.1,
        "gradient_cosine/b/c": 0.5,
    }


def test_final_metrics():
    final = {"valid": {"a": {"auc": 0.8}}, "test": {"a": {"auc": 0.75}}}
    summary = {
        "score": {"test": {"name": "delta_m", "value": 1.5}, "valid": {"name": "x", "value": None}},
        "parameters": 120,
        "train_seconds": 2.0,
        "best_epoch": 2,
        "epochs_run": 3,
    }
    assert final_metrics(final, summary) == {
        "final/valid/a/auc": 0.8,
        "final/test/a/auc": 0.75,
        "final/test/delta_m": 1.5,
        "parameters": 120.0,
        "train_seconds": 2.0,
        "best_epoch": 2.0,
        "epochs_run": 3.0,
    }
