"""One training run followed in MLflow: parameters at the first epoch, metrics after every
epoch, and at the end the final metrics, the run directory and the pyfunc model.

Every call goes through an explicit :class:`MlflowClient` for one tracking URI: no global MLflow
state is set, so several tracked runs (or a sweep's trials) in one process do not interfere. The
MLflow run id is kept in the run directory's ``tracking.json``, so ``--resume`` continues the same
MLflow run, logging the epochs it had not logged yet.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from polytask import __version__
from polytask.artifacts import run_dir as rd
from polytask.config import RunSpec, TrackSpec
from polytask.errors import PolytaskError
from polytask.track.flatten import epoch_metrics, final_metrics, flatten_spec
from polytask.track.pyfunc import save_pyfunc

TRACKING_FILE = rd.TRACKING
DEFAULT_STORE = "mlflow.db"
ARTIFACT_FOLDER = "mlruns"
BATCH_LIMIT = 1000  # MLflow's most metrics in one log_batch call
RUN_FOLDER, MODEL_FOLDER = "run", "model"


def resolve_uri(setting: bool | str, cwd: Path | None = None) -> str:
    """The tracking URI a ``track.mlflow`` setting means, with local paths made absolute (a
    resumed run may start elsewhere)."""
    cwd = cwd or Path.cwd()
    if setting is True:
        from_env = os.environ.get("MLFLOW_TRACKING_URI")
        if from_env:
            return from_env
        return f"sqlite:///{(cwd / DEFAULT_STORE).resolve()}"
    text = str(setting)
    if text.startswith("sqlite:///"):
        return f"sqlite:///{(cwd / text.removeprefix('sqlite:///')).resolve()}"
    if "://" not in text and text.endswith(".db"):
        return f"sqlite:///{(cwd / text).resolve()}"
    return text


def _local_artifact_root(uri: str) -> str | None:
    """For a SQLite store, artifacts go in ``mlruns/`` beside the database file."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACT_FOLDER).as_uri()


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """MLflow's own chatter (database set-up, advice on type hints and input examples, artifact
    progress bars) would interleave with polytask's output; keep only its warnings and errors."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    progress = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    logger.setLevel(logging.WARNING)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)
        if progress is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = progress


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


class MlflowRun:
    """Follows one polytask run (``out`` is its final path) in MLflow."""

    def __init__(self, settings: TrackSpec, out: Path, *, resume: bool) -> None:
        self.settings = settings
        self.out = rd.final_path(Path(out).resolve())
        self.partial = rd.partial_path(self.out)
        self.resume = resume
        self.run_id: str | None = None
        self.last_epoch = 0
        self.uri = resolve_uri(settings.mlflow)
        self._client: MlflowClient | None = None
        self.experiment_id = ""
        self.previous: dict[str, Any] | None = None  # tracking.json of the run being resumed

    @property
    def client(self) -> MlflowClient:
        """Made at first use: for a SQLite store that creates the database."""
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # ------------------------------------------------------------------ the epochs
    def on_epoch(self, row: dict[str, Any]) -> None:
        with quiet_mlflow():
            rows = [row]
            if self.run_id is None:
                self._start()
                rows = [*self._unlogged_rows(before=row["epoch"]), row]
            self._log_rows(rows)

    def connect(self) -> None:
        """Open the store and find (or create) the experiment before training starts, so that a
        wrong URI or an unwritable store fails at once, not after the first epoch."""
        self.previous = self._read_state() if self.resume else None
        with quiet_mlflow():
            try:
                self.experiment_id = self._experiment_id()
            except Exception as error:  # MlflowException, OSError, the database driver's
                raise PolytaskError(f"MLflow tracking at {self.uri}: {_one_line(error)}") from None

    def _start(self) -> None:
        previous = self.previous
        if previous is not None:
            self.run_id = previous["run_id"]
            self.last_epoch = previous["last_epoch"]
            self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            return
        spec = rd.load_config(self.partial)
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.settings.run_name or self.out.name,
            tags={"polytask.run_dir": str(self.out), "polytask.version": __version__},
        )
        self.run_id = run.info.run_id
        self._log_params(spec)

    def _experiment_id(self) -> str:
        name = self.settings.experiment
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, _local_artifact_root(self.uri))
        except MlflowException:  # created meanwhile by another process
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _log_params(self, spec: RunSpec) -> None:
        params = [Param(k, v) for k, v in flatten_spec(spec.to_yaml_dict()).items()]
        for start in range(0, len(params), 100):  # MLflow's most params in one batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def _unlogged_rows(self, before: int) -> list[dict[str, Any]]:
        """Epochs a killed run had checkpointed but not logged (only after a resume)."""
        log = self.partial / rd.EPOCH_LOG
        if not self.resume or not log.is_file():
            return []
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        return [row for row in rows if self.last_epoch < row["epoch"] < before]

    def _log_rows(self, rows: list[dict[str, Any]]) -> None:
        stamp = int(time.time() * 1000)
        metrics = [
            Metric(key, value, stamp, row["epoch"])
            for row in rows
            if row["epoch"] > self.last_epoch
            for key, value in epoch_metrics(row).items()
        ]
        self._log_metrics(metrics)
        self.last_epoch = max([self.last_epoch, *(row["epoch"] for row in rows)])
        self._write_state(self.partial)

    def _log_metrics(self, metrics: list[Metric]) -> None:
        for start in range(0, len(metrics), BATCH_LIMIT):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + BATCH_LIMIT])

    # ------------------------------------------------------------------ the end
    def finish(self, run: Path) -> None:
        """Final metrics, the run directory, the model; then mark the MLflow run finished."""
        if self.run_id is None:
            return
        with quiet_mlflow():
            self._finish(run)

    def _finish(self, run: Path) -> None:
        stamp = int(time.time() * 1000)
        summary = rd.load_json(run, rd.SUMMARY)
        final = rd.load_json(run, rd.FINAL_METRICS)
        step = summary.get("best_epoch", 0)
        metrics = [Metric(k, v, stamp, step) for k, v in final_metrics(final, summary).items()]
        self._log_metrics(metrics)
        model_uri = None
        if self.settings.log_model and summary.get("encoder") != "custom":
            with tempfile.TemporaryDirectory(prefix="polytask-mlflow-") as scratch:
                save_pyfunc(run, Path(scratch) / MODEL_FOLDER)
                self.client.log_artifacts(self.run_id, str(Path(scratch) / MODEL_FOLDER), "model")
            model_uri = f"runs:/{self.run_id}/{MODEL_FOLDER}"
            self.client.set_tag(self.run_id, "polytask.model_uri", model_uri)
        self._write_state(run, model_uri=model_uri)
        if self.settings.log_artifacts:
            self.client.log_artifacts(self.run_id, str(run), RUN_FOLDER)
        self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED))

    def abort(self, status: str, reason: str) -> None:
        """Mark the MLflow run KILLED or FAILED (a resumed run sets it running again)."""
        if self.run_id is None:
            return
        self.client.log_batch(self.run_id, tags=[RunTag("polytask.stopped", reason[:5000])])
        self.client.set_terminated(self.run_id, status)

    # ------------------------------------------------------------------ tracking.json
    def _read_state(self) -> dict[str, Any] | None:
        path = self.partial / TRACKING_FILE
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        if state.get("tracking_uri") != self.uri:
            raise PolytaskError(
                f"{path} names MLflow store {state.get('tracking_uri')}, but this resume "
                f"tracks to {self.uri}; resume with --mlflow {state.get('tracking_uri')}"
            )
        return state

    def _write_state(self, folder: Path, **extra: Any) -> None:
        rd.save_json(
            folder,
            TRACKING_FILE,
            {
                "tracking_uri": self.uri,
                "run_id": self.run_id,
                "experiment": self.settings.experiment,
                "last_epoch": self.last_epoch,
                **extra,
            },
        )
