"""A tracked run, read back through MLflow's client: parameters, per-epoch metrics, artifacts,
the pyfunc model (equal to Predictor on raw rows), resume, and nothing logged unless asked."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import polytask
from polytask.artifacts import run_dir as rd
from polytask.config import load_spec
from polytask.errors import PolytaskError
from polytask.optional import require
from polytask.track.flatten import flatten_spec
from polytask.track.mlflow_run import TRACKING_FILE, resolve_uri
from tests.cli_helpers import assert_user_error, invoke
from tests.conftest import base_spec, make_table, write_yaml
from tests.inference.test_predictor import raw_rows

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """Value per step; a step logged twice would fail the length check."""
    logged = client.get_metric_history(run_id, key)
    steps = {m.step: m.value for m in logged}
    assert len(steps) == len(logged), f"{key}: a step logged twice"
    return steps


def epoch_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / rd.EPOCH_LOG).read_text().splitlines()]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the module (creating its database takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'store.db'}"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, store):
    folder = tmp_path_factory.mktemp("tracked")
    make_table(n=240, seed=4).to_csv(folder / "t.csv", index=False)
    uri = store
    spec = base_spec(
        folder / "t.csv",
        train={"epochs": 3, "diagnostics_every": 1},
        track={"mlflow": uri, "experiment": "tests"},
    )
    predictor = polytask.train(spec, folder / "run")
    state = json.loads((predictor.run / TRACKING_FILE).read_text())
    client = MlflowClient(uri)
    # the model's full address: a runs:/ URI would be read against MLflow's global store
    model_uri = f"{client.get_run(state['run_id']).info.artifact_uri}/model"
    return {
        "predictor": predictor,
        "client": client,
        "run_id": state["run_id"],
        "state": state,
        "uri": uri,
        "model_uri": model_uri,
    }


def test_run_is_finished_and_named(tracked):
    client, run_id = tracked["client"], tracked["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "tests"
    assert run.data.tags["polytask.run_dir"] == str(tracked["predictor"].run)
    assert tracked["state"]["model_uri"] == f"runs:/{run_id}/model"


def test_params_are_the_flattened_spec(tracked):
    run = tracked["client"].get_run(tracked["run_id"])
    saved = load_spec(tracked["predictor"].run / rd.CONFIG)
    assert run.data.params == flatten_spec(saved.to_yaml_dict())
    assert run.data.params["model.arch"] == "mmoe"
    assert run.data.params["tasks.1.name"] == "segment"


def test_every_epoch_is_logged(tracked):
    client, run_id = tracked["client"], tracked["run_id"]
    rows = epoch_rows(tracked["predictor"].run)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for task in ("click", "segment", "spend", "tags"):
        metric = {"click": "auc", "segment": "accuracy", "spend": "rmse", "tags": "mean_auc"}[task]
        expected = {row["epoch"]: row["valid"][task][metric] for row in rows}
        assert history(client, run_id, f"valid/{task}/{metric}") == pytest.approx(expected)
        weights = {row["epoch"]: row["task_weights"][task] for row in rows}
        assert history(client, run_id, f"task_weight/{task}") == pytest.approx(weights)
    conflicts = {row["epoch"]: row["conflict_rate"] for row in rows}
    assert history(client, run_id, "conflict_rate") == pytest.approx(conflicts)
    cosine = {row["epoch"]: row["gradient_cosine"][0][2] for row in rows}
    assert history(client, run_id, "gradient_cosine/click/spend") == pytest.approx(cosine)
    losses = {row["epoch"]: row["train_loss"] for row in rows}
    assert history(client, run_id, "train_loss") == pytest.approx(losses)


def test_final_metrics_and_artifacts(tracked):
    client, run_id, run = tracked["client"], tracked["run_id"], tracked["predictor"].run
    final = rd.load_json(run, rd.FINAL_METRICS)
    logged = client.get_run(run_id).data.metrics
    assert logged["final/test/click/auc"] == pytest.approx(final["test"]["click"]["auc"])
    assert logged["parameters"] == rd.load_json(run, rd.SUMMARY)["parameters"]
    names = {Path(item.path).name for item in client.list_artifacts(run_id, "run")}
    assert names == {path.name for path in run.iterdir()}
    model_files = {Path(item.path).name for item in client.list_artifacts(run_id, "model")}
    assert {"MLmodel", "artifacts"} <= model_files


def test_pyfunc_model_predicts_raw_rows_like_the_predictor(tracked):
    model = mlflow.pyfunc.load_model(tracked["model_uri"])
    frame = raw_rows()
    expected = tracked["predictor"].predict(frame)
    got = model.predict(frame)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))


def test_signature_lists_every_input_as_optional(tracked):
    model = mlflow.pyfunc.load_model(tracked["model_uri"])
    inputs = model.metadata.get_input_schema().inputs
    preprocessor = tracked["predictor"].preprocessor
    assert [c.name for c in inputs] == preprocessor.categorical + preprocessor.numeric
    assert not any(c.required for c in inputs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mlflow_models_serve_answers_raw_rows(tracked):
    """`mlflow models serve --env-manager local` on the logged model, over HTTP."""
    executable = Path(sys.executable).with_name("mlflow")
    if not executable.is_file():
        pytest.skip("the mlflow command is not installed beside this Python")
    port = _free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracked["uri"])
    env["PATH"] = f"{executable.parent}{os.pathsep}{env.get('PATH', '')}"
    command = [str(executable), "models", "serve", "-m", tracked["state"]["model_uri"]]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, "mlflow models serve exited"
                assert time.monotonic() < deadline, "mlflow models serve did not start"
                time.sleep(0.3)
        rows = [
            {"color": "red", "city": "rome", "x1": 0.5, "count": 3},
            {"color": None, "city": "atlantis", "x1": None},
        ]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"dataframe_records": rows}).encode(),
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    expected = tracked["predictor"].predict(pd.DataFrame(rows))
    got = pd.DataFrame(answer["predictions"])[list(expected.columns)]
    numbers = [c for c in expected.columns if c != "segment"]
    np.testing.assert_allclose(got[numbers].to_numpy(float), expected[numbers].to_numpy(float))
    assert list(got["segment"]) == list(expected["segment"])


# ---------------------------------------------------------------------- off unless asked
def test_nothing_is_logged_unless_asked(tmp_path, monkeypatch, spec_dict):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec_dict["train"]["epochs"] = 1
    run = polytask.train(spec_dict, tmp_path / "run").run
    assert not (run / TRACKING_FILE).exists()
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "mlruns").exists()


def test_true_means_a_local_store_under_the_working_directory(tmp_path, monkeypatch, spec_dict):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec_dict["train"]["epochs"] = 1
    spec_dict["track"] = {"mlflow": True}
    run = polytask.train(spec_dict, "run").run
    state = json.loads((run / TRACKING_FILE).read_text())
    assert state["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(state["tracking_uri"])
    artifact_root = client.get_experiment_by_name("polytask").artifact_location
    assert artifact_root == (tmp_path / "mlruns").as_uri()
    assert (tmp_path / "mlruns").is_dir()
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:  # the store polytask created
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_resolve_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(True, tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_uri("x/t.db", tmp_path) == f"sqlite:///{tmp_path / 'x/t.db'}"
    assert resolve_uri("sqlite:///t.db", tmp_path) == f"sqlite:///{tmp_path / 't.db'}"
    assert resolve_uri("sqlite:////abs/t.db", tmp_path) == "sqlite:////abs/t.db"
    assert resolve_uri("http://host:5000", tmp_path) == "http://host:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")
    assert resolve_uri(True, tmp_path) == "http://elsewhere:5000"


# ---------------------------------------------------------------------- resume and the CLI
def test_resume_continues_the_same_mlflow_run(tmp_path, spec_dict, store):
    uri = store
    spec_dict["train"]["epochs"] = 4
    spec_dict["track"] = {
        "mlflow": uri,
        "experiment": "resume",
        "log_model": False,
        "log_artifacts": False,
    }

    def interrupt_after_two(row: dict) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        polytask.train(spec_dict, tmp_path / "run", callbacks=[interrupt_after_two])
    state = json.loads((tmp_path / "run.partial" / TRACKING_FILE).read_text())
    client = MlflowClient(uri)
    assert client.get_run(state["run_id"]).info.status == "KILLED"
    run = polytask.train(spec_dict, tmp_path / "run", resume=True).run
    assert json.loads((run / TRACKING_FILE).read_text())["run_id"] == state["run_id"]
    assert client.get_run(state["run_id"]).info.status == "FINISHED"
    logged = history(client, state["run_id"], "valid/click/auc")
    expected = {row["epoch"]: row["valid"]["click"]["auc"] for row in epoch_rows(run)}
    assert logged == pytest.approx(expected)  # epochs 1-4, each once
    assert len(client.search_runs([client.get_experiment_by_name("resume").experiment_id])) == 1
    assert client.list_artifacts(state["run_id"]) == []


def test_cli_mlflow_option(tmp_path, store):
    make_table(n=120).to_csv(tmp_path / "t.csv", index=False)
    config = write_yaml(tmp_path / "spec.yaml", base_spec("t.csv", train={"epochs": 1}))
    uri = store
    result = invoke("train", config, "-o", tmp_path / "run", "--quiet", "--mlflow", uri)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert load_spec(run / rd.CONFIG).track.mlflow == uri
    state = json.loads((run / TRACKING_FILE).read_text())
    assert MlflowClient(uri).get_run(state["run_id"]).info.status == "FINISHED"


def test_cli_rejects_a_bad_tracking_setting(tmp_path):
    make_table(n=120).to_csv(tmp_path / "t.csv", index=False)
    config = write_yaml(tmp_path / "spec.yaml", base_spec("t.csv", train={"epochs": 1}))
    result = invoke("train", config, "-o", tmp_path / "run", "--mlflow", "somewhere")
    assert_user_error(result, "track.mlflow", "tracking URI")
    assert not (tmp_path / "run").exists()


def test_unreachable_store_is_one_line(tmp_path, spec_dict):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    spec_dict["train"]["epochs"] = 1
    spec_dict["track"] = {"mlflow": f"sqlite:///{blocker / 'store.db'}"}
    with pytest.raises(PolytaskError, match="MLflow tracking at sqlite:///"):
        polytask.train(spec_dict, tmp_path / "run")


def test_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(PolytaskError, match=r"pip install 'polytask\[track\]'"):
        require("mlflow", "MLflow tracking", "track")


def test_missing_mlflow_stops_a_tracked_run_before_training(tmp_path, monkeypatch, spec_dict):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    spec_dict["track"] = {"mlflow": True}
    with pytest.raises(PolytaskError, match="MLflow tracking needs the 'mlflow' package"):
        polytask.train(spec_dict, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "run.partial").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize("flush_seconds", [0.0, 1e9])
def test_a_hard_kill_loses_no_epoch(tmp_path, spec_dict, store, monkeypatch, flush_seconds):
    """Killed without any clean-up (SystemExit passes the tracker's handlers), with epochs
    written as they end (0 s) or none written yet (buffered): the resume logs every epoch
    once, to one MLflow run."""
    monkeypatch.setattr("polytask.track.mlflow_run.FLUSH_SECONDS", flush_seconds)
    experiment = f"hard-kill-{flush_seconds:g}"
    spec_dict["train"]["epochs"] = 4
    spec_dict["track"] = {"mlflow": store, "experiment": experiment, "log_model": False}

    def die_at_three(row: dict) -> None:
        if row["epoch"] == 3:
            raise SystemExit(9)

    with pytest.raises(SystemExit):
        polytask.train(spec_dict, tmp_path / "run", callbacks=[die_at_three])
    run = polytask.train(spec_dict, tmp_path / "run", resume=True).run
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert json.loads((run / TRACKING_FILE).read_text())["run_id"] == run_id
    expected = {row["epoch"]: row["valid"]["click"]["auc"] for row in epoch_rows(run)}
    assert history(client, run_id, "valid/click/auc") == pytest.approx(expected)
    assert runs[0].data.params["train.epochs"] == "4"
