"""Training into a run directory: layout, determinism, early stopping and resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import polytask
from polytask.cli import app
from polytask.config import load_spec
from polytask.errors import PolytaskError
from polytask.train import trainer as trainer_module
from polytask.train.trainer import TrainingDiverged, fit
from tests.conftest import base_spec, make_table, write_yaml
from tests.train.helpers import (
    assert_same_weights,
    epoch_rows,
    read_json,
    train,
    without_timing,
)

RUN_FILES = [
    "config.yaml",
    "preprocessor.json",
    "model.safetensors",
    "metrics.jsonl",
    "metrics.json",
    "summary.json",
]


# ---------------------------------------------------------------------- the run directory
def test_run_directory_layout(trained_run):
    run: Path = trained_run["run"]
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert not (run / "checkpoint.pt").exists()
    assert not run.with_name(run.name + ".partial").exists()
    assert not list(run.glob("*.tmp"))
    summary = read_json(run / "summary.json")
    assert summary["epochs_run"] == 6 and summary["stopped_early"] is False
    assert summary["tasks"] == ["click", "segment", "spend", "tags"]
    assert summary["rows"] == {"train": 300, "valid": 120, "test": 120}
    assert summary["arch"] == "mmoe" and summary["balance"]["method"] == "equal"
    assert summary["score"]["test"]["name"] == "mean_normalised"
    weights = load_file(str(run / "model.safetensors"))
    assert summary["parameters"] == sum(
        t.numel() for t in weights.values() if t.is_floating_point()
    )


def test_epoch_log_has_one_line_per_epoch_and_marks_the_best(trained_run):
    rows = epoch_rows(trained_run["run"])
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4, 5, 6]
    for row in rows:
        assert set(row["valid"]) == {"click", "segment", "spend", "tags"}
        assert math.isfinite(row["train_loss"])
        assert row["train_loss"] == pytest.approx(np.mean(list(row["train_task_loss"].values())))
    # the best epoch is the one with the highest monitored value so far, and is the one kept
    best, best_value = 0, -math.inf
    for row in rows:
        assert row["best"] == (row["monitor"] > best_value)
        if row["best"]:
            best, best_value = row["epoch"], row["monitor"]
    assert read_json(trained_run["run"] / "summary.json")["best_epoch"] == best


def test_final_metrics_cover_every_task_and_split(trained_run):
    final = read_json(trained_run["run"] / "metrics.json")
    assert set(final) == {"valid", "test"}
    assert set(final["test"]["click"]) == {"auc", "logloss", "accuracy", "loss"}
    assert set(final["test"]["segment"]) == {"accuracy", "macro_f1", "loss"}
    assert set(final["test"]["spend"]) == {"rmse", "mae", "r2", "loss"}
    assert set(final["test"]["tags"]) == {"mean_auc", "loss"}


def test_saved_config_reloads_to_the_same_spec(trained_run):
    saved = load_spec(trained_run["run"] / "config.yaml")
    original = load_spec(trained_run["config"])
    assert saved == original


def test_load_and_predict_from_the_run(trained_run):
    predictions = polytask.load(trained_run["run"]).predict(trained_run["frames"]["test"])
    assert len(predictions) == 120
    assert predictions.notna().all().all()


# ---------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_runs_and_another_seed_differs(tmp_path, spec_dict):
    spec_dict["model"]["dropout"] = 0.2
    first = train(spec_dict, tmp_path / "a")
    second = train(spec_dict, tmp_path / "b")
    assert_same_weights(first, second)
    assert read_json(first / "metrics.json") == read_json(second / "metrics.json")
    assert without_timing(epoch_rows(first)) == without_timing(epoch_rows(second))
    spec_dict["train"]["seed"] = 1
    other = train(spec_dict, tmp_path / "c")
    a, c = load_file(str(first / "model.safetensors")), load_file(str(other / "model.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    assert read_json(first / "metrics.json") != read_json(other / "metrics.json")


# ---------------------------------------------------------------------- selection and schedules
def test_early_stopping_stops_after_patience_epochs_without_gain(tmp_path, spec_dict):
    # a learning rate too small to change any float32 weight: no epoch can improve on the first
    spec_dict["train"].update(epochs=10, lr=1e-30, early_stopping={"patience": 2})
    run = train(spec_dict, tmp_path / "run")
    summary = read_json(run / "summary.json")
    assert summary["epochs_run"] == 3
    assert summary["best_epoch"] == 1
    assert summary["stopped_early"] is True
    assert [row["best"] for row in epoch_rows(run)] == [True, False, False]


def test_without_validation_rows_the_last_epoch_is_kept(tmp_path, spec_dict):
    spec_dict["data"]["split"] = {"valid": 0.0, "test": 0.25, "seed": 0}
    run = train(spec_dict, tmp_path / "run")
    summary = read_json(run / "summary.json")
    assert summary["best_epoch"] == summary["epochs_run"] == 3
    assert "valid" not in summary["rows"]
    assert summary["selection"].startswith("last epoch")
    assert set(read_json(run / "metrics.json")) == {"test"}


def test_step_schedule_halves_the_rate(tmp_path, spec_dict):
    spec_dict["train"].update(epochs=4, schedule={"name": "step", "step_size": 2, "gamma": 0.5})
    rows = epoch_rows(train(spec_dict, tmp_path / "run"))
    assert [row["lr"] for row in rows] == pytest.approx([0.01, 0.01, 0.005, 0.005])


def test_callbacks_get_each_epoch_row(tmp_path, spec_dict):
    seen = []
    train(spec_dict, tmp_path / "run", callbacks=[seen.append])
    assert [row["epoch"] for row in seen] == [1, 2, 3]
    assert all("valid" in row and "train_loss" in row for row in seen)


def test_training_learns_something(trained_run):
    """A sanity check that the pieces fit: every task beats a constant predictor on test."""
    final = read_json(trained_run["run"] / "metrics.json")["test"]
    assert final["click"]["auc"] > 0.6
    assert final["spend"]["r2"] > 0.0
    assert final["tags"]["mean_auc"] > 0.55


def test_parquet_training_table(tmp_path):
    make_table(n=120).to_parquet(tmp_path / "t.parquet", index=False)
    run = train(base_spec(tmp_path / "t.parquet", train={"epochs": 1}), tmp_path / "run")
    assert read_json(run / "summary.json")["rows"] == {"train": 72, "valid": 24, "test": 24}


# ---------------------------------------------------------------------- folder life cycle
def test_existing_run_needs_overwrite(tmp_path, spec_dict):
    spec_dict["train"]["epochs"] = 1
    run = train(spec_dict, tmp_path / "run")
    with pytest.raises(PolytaskError, match="already exists; pass --overwrite"):
        train(spec_dict, run)
    spec_dict["train"]["seed"] = 5
    train(spec_dict, run, overwrite=True)
    assert load_spec(run / "config.yaml").train.seed == 5
    assert not run.with_name("run.old").exists()


def test_resume_without_a_checkpoint(tmp_path, spec_dict):
    with pytest.raises(PolytaskError, match="no checkpoint to resume"):
        fit(None, tmp_path / "nothing", resume=True, progress=False)
    spec_dict["train"]["epochs"] = 1
    run = train(spec_dict, tmp_path / "done")
    with pytest.raises(PolytaskError, match="already finished"):
        fit(None, run, resume=True, progress=False)


def test_bad_data_leaves_no_folder(tmp_path, table):
    table.loc[5, "clicked"] = 2
    table.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(PolytaskError, match="holds 2 at row 6"):
        train(base_spec(tmp_path / "t.csv"), tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


# ---------------------------------------------------------------------- resume
def test_resume_after_an_interrupt_equals_an_uninterrupted_run(tmp_path, spec_dict):
    spec_dict["model"]["dropout"] = 0.1  # the random state has to be restored too
    spec_dict["train"].update(epochs=4, schedule={"name": "cosine"})
    full = train(spec_dict, tmp_path / "full")

    def interrupt_after_two(row: dict) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    out = tmp_path / "cut"
    partial = tmp_path / "cut.partial"
    with pytest.raises(KeyboardInterrupt):
        train(spec_dict, out, callbacks=[interrupt_after_two])
    assert not out.exists()
    assert (partial / "checkpoint.pt").is_file()
    assert [row["epoch"] for row in epoch_rows(partial)] == [1, 2]
    with pytest.raises(PolytaskError, match="--resume"):
        polytask.load(out)
    with pytest.raises(PolytaskError, match="--resume"):
        train(spec_dict, out)  # a fresh start must not silently discard the unfinished run

    resumed = fit(None, out, resume=True, progress=False)
    assert resumed == out.resolve()
    assert not partial.exists()
    assert not (out / "checkpoint.pt").exists()
    assert_same_weights(full, out)
    assert read_json(full / "metrics.json") == read_json(out / "metrics.json")
    assert without_timing(epoch_rows(full)) == without_timing(epoch_rows(out))
    summaries = [read_json(run / "summary.json") for run in (full, out)]
    for key in ("epochs_run", "best_epoch", "score", "rows"):
        assert summaries[0][key] == summaries[1][key]


def test_sigkill_mid_training_then_resume_from_the_cli(tmp_path):
    make_table(n=2000, seed=3).to_csv(tmp_path / "t.csv", index=False)
    spec = base_spec(
        tmp_path / "t.csv",
        data={"split": {"valid": 0.1, "test": 0.1, "seed": 0}},
        train={"epochs": 12, "batch_size": 16, "threads": 1},
    )
    config = write_yaml(tmp_path / "cfg.yaml", spec)
    out = tmp_path / "run"
    checkpoint = tmp_path / "run.partial" / "checkpoint.pt"
    with (tmp_path / "stderr.txt").open("w") as stderr:
        command = ["train", str(config), "--out", str(out), "--quiet"]
        process = subprocess.Popen(
            [sys.executable, "-m", "polytask.cli", *command],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        deadline = time.monotonic() + 120
        try:
            while not checkpoint.exists() and process.poll() is None:
                assert time.monotonic() < deadline, "no checkpoint within 120 s"
                time.sleep(0.005)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    if out.exists():
        pytest.skip("training finished before the kill landed")
    assert process.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()
    assert checkpoint.is_file()
    done = (
        len(epoch_rows(checkpoint.parent)) if (checkpoint.parent / "metrics.jsonl").exists() else 0
    )
    assert done < 12

    result = CliRunner().invoke(app, ["train", "--resume", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (out / "summary.json").is_file()
    assert not checkpoint.parent.exists()
    assert read_json(out / "summary.json")["epochs_run"] == 12
    assert [row["epoch"] for row in epoch_rows(out)] == list(range(1, 13))


# ---------------------------------------------------------------------- divergence
def test_a_diverging_run_stops_with_a_clear_message_and_leaves_nothing(tmp_path, spec_dict):
    """lr 1e8 used to finish with exit 0 and "best epoch 0"; now the first non-finite loss
    stops training, and with no checkpoint yet nothing is kept."""
    spec_dict["train"]["lr"] = 1e8
    with pytest.raises(TrainingDiverged, match=r"training diverged: task '\w+' loss is nan") as e:
        fit(load_spec(spec_dict), tmp_path / "run", progress=False)
    assert "train.lr is 1e+08" in str(e.value) and "nothing was kept" in str(e.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_divergence_after_a_checkpoint_keeps_the_last_finite_one(tmp_path, spec_dict, monkeypatch):
    real = trainer_module.train_step
    calls = {"steps": 0}
    steps_per_epoch = 3  # 144 training rows, batch 64

    def nan_in_epoch_two(*args, **kwargs):
        result = real(*args, **kwargs)
        calls["steps"] += 1
        if calls["steps"] > steps_per_epoch:
            result.losses[1] = float("nan")  # the second task's loss
        return result

    monkeypatch.setattr(trainer_module, "train_step", nan_in_epoch_two)
    with pytest.raises(TrainingDiverged, match=r"task 'segment' loss is nan at epoch 2") as e:
        fit(load_spec(spec_dict), tmp_path / "run", progress=False)
    assert "kept in" in str(e.value) and "for inspection" in str(e.value)
    partial = tmp_path / "run.partial"
    checkpoint = torch.load(partial / "checkpoint.pt", weights_only=False)
    assert checkpoint["loop"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())
    assert not (tmp_path / "run").exists()


def test_non_finite_weights_after_an_epoch_stop_training(tmp_path, spec_dict, monkeypatch):
    real = trainer_module.train_step

    def poison(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(trainer_module, "train_step", poison)
    with pytest.raises(TrainingDiverged, match=r"weight '.+' is not finite after epoch 1"):
        fit(load_spec(spec_dict), tmp_path / "run", progress=False)


def test_a_callback_returning_true_ends_training_as_a_finished_run(tmp_path, spec_dict):
    spec_dict["train"]["epochs"] = 5
    seen = []

    def stop_after_two(row: dict) -> bool:
        seen.append(row["epoch"])
        return row["epoch"] == 2

    run = train(spec_dict, tmp_path / "run", callbacks=[stop_after_two, lambda row: None])
    assert seen == [1, 2]
    summary = read_json(run / "summary.json")
    assert summary["epochs_run"] == 2
    assert summary["stopped_early"] is True
    assert [row["epoch"] for row in epoch_rows(run)] == [1, 2]
    assert (run / "model.safetensors").is_file()
