"""One training run followed in MLflow: its parameters, every epoch's metrics, and at the end
the final metrics, the run directory and the pyfunc model.

Every call goes through an explicit :class:`MlflowClient` for one tracking URI: no global MLflow
state is set, so several tracked runs (or a sweep's trials) in one process do not interfere. The
MLflow run id is kept in the run directory's ``tracking.json``, so ``--resume`` continues the same
MLflow run, logging the epochs it had not logged yet.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
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
BATCH_LIMIT = 1000  # MLflow's most entries (metrics + params + tags) in one log_batch call
BATCH_TAGS_OR_PARAMS = 100  # and its most params, and tags, in one call
FLUSH_SECONDS = 10.0  # buffered epoch metrics are written at least this often
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


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _local_artifact_root(uri: str) -> str | None:
    """For a SQLite store, artifacts go in ``mlruns/`` beside the database file."""
    database = _sqlite_file(uri)
    return None if database is None else (database.parent / ARTIFACT_FOLDER).as_uri()


def _write_ahead_log(database: Path) -> None:
    """Put a SQLite store that polytask just created in write-ahead-log mode (a setting kept in
    the file): each of MLflow's commits then syncs once instead of several times (about half
    the cost of a write here), and parallel sweep trials do not block each other's reads."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


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
    """Follows one polytask run (``out`` is its final path) in MLflow.

    Epoch metrics are buffered and written at most every ``FLUSH_SECONDS`` (and at the end):
    each write is a database transaction of tens of milliseconds, which would otherwise cost a
    run of short epochs several percent of its time. ``tracking.json`` records the last epoch
    written, so a killed run's resume writes the rest from ``metrics.jsonl``.
    """

    def __init__(self, settings: TrackSpec, out: Path, *, resume: bool) -> None:
        self.settings = settings
        self.out = rd.final_path(Path(out).resolve())
        self.partial = rd.partial_path(self.out)
        self.resume = resume
        self.uri = resolve_uri(settings.mlflow)
        self._client: MlflowClient | None = None
        self.experiment_id = ""
        self.previous: dict[str, Any] | None = None  # tracking.json of the run being resumed
        self.run_id: str | None = None
        self.begun = False
        self.started_ms = 0
        self.last_epoch = 0  # written to MLflow
        self.pending_epoch = 0  # buffered up to here
        self.pending_metrics: list[Metric] = []
        self.pending_params: list[Param] = []
        self.last_flush = time.monotonic()

    @property
    def client(self) -> MlflowClient:
        """Made at first use: for a SQLite store that creates the database."""
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def active_run_id(self) -> str:
        """The MLflow run being logged to (set once training has begun)."""
        if self.run_id is None:
            raise RuntimeError("the MLflow run has not begun")
        return self.run_id

    def connect(self) -> None:
        """Open the store and find (or create) the experiment before training starts, so that a
        wrong URI or an unwritable store fails at once, not after the first epoch."""
        self.previous = self._read_state() if self.resume else None
        self.started_ms = int(time.time() * 1000)
        database = _sqlite_file(self.uri)
        new_store = database is not None and not database.exists()
        with quiet_mlflow():
            try:
                self.experiment_id = self._experiment_id()
                if new_store and database is not None:
                    _write_ahead_log(database)
            except Exception as error:  # MlflowException, OSError, the database driver's
                raise PolytaskError(f"MLflow tracking at {self.uri}: {_one_line(error)}") from None

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

    # ------------------------------------------------------------------ the epochs
    def on_epoch(self, row: dict[str, Any]) -> None:
        with quiet_mlflow():
            self._begin(before=row["epoch"])
            self._queue(row)
            if time.monotonic() - self.last_flush >= FLUSH_SECONDS:
                self._flush(self.partial)

    def _begin(self, before: float) -> None:
        """At the first epoch: queue the parameters of a new run, or, resuming, the epochs the
        killed run had checkpointed but not written."""
        if self.begun:
            return
        self.begun = True
        if self.previous is None:  # a new MLflow run (also for a run killed before any write)
            spec: RunSpec = rd.load_config(self.partial)
            flat = flatten_spec(spec.to_yaml_dict())
            self.pending_params = [Param(k, v) for k, v in flat.items()]
        else:
            self.run_id = self.previous["run_id"]
            self.last_epoch = self.pending_epoch = self.previous["last_epoch"]
            self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        if not self.resume:
            return
        log = self.partial / rd.EPOCH_LOG
        lines = log.read_text().splitlines() if log.is_file() else []
        for row in (json.loads(line) for line in lines if line.strip()):
            if self.last_epoch < row["epoch"] < before:
                self._queue(row)

    def _queue(self, row: dict[str, Any]) -> None:
        stamp = int(time.time() * 1000)
        step = row["epoch"]
        self.pending_metrics += [Metric(k, v, stamp, step) for k, v in epoch_metrics(row).items()]
        self.pending_epoch = max(self.pending_epoch, step)

    def _flush(self, folder: Path, tags: list[RunTag] | None = None, **state: Any) -> None:
        """Write what is buffered (creating the MLflow run at the first write), then record the
        last epoch written in ``folder``'s tracking.json."""
        self._ensure_run()
        metrics, params, tags = self.pending_metrics, self.pending_params, list(tags or [])
        while metrics or params or tags:
            params_now, params = params[:BATCH_TAGS_OR_PARAMS], params[BATCH_TAGS_OR_PARAMS:]
            tags_now, tags = tags[:BATCH_TAGS_OR_PARAMS], tags[BATCH_TAGS_OR_PARAMS:]
            room = BATCH_LIMIT - len(params_now) - len(tags_now)
            metrics_now, metrics = metrics[:room], metrics[room:]
            self.client.log_batch(self.active_run_id, metrics_now, params_now, tags_now)
        self.pending_metrics, self.pending_params = [], []
        self.last_epoch = self.pending_epoch
        self.last_flush = time.monotonic()
        self._write_state(folder, **state)

    def _ensure_run(self) -> None:
        if self.run_id is not None:
            return
        run = self.client.create_run(
            self.experiment_id,
            start_time=self.started_ms,
            run_name=self.settings.run_name or self.out.name,
            tags={"polytask.run_dir": str(self.out), "polytask.version": __version__},
        )
        self.run_id = run.info.run_id

    # ------------------------------------------------------------------ the end
    def finish(self, run: Path) -> None:
        """Final metrics, the run directory, the model; then mark the MLflow run finished."""
        with quiet_mlflow():
            self._begin(before=math.inf)
            self._finish(run)

    def _finish(self, run: Path) -> None:
        self._ensure_run()
        stamp = int(time.time() * 1000)
        summary = rd.load_json(run, rd.SUMMARY)
        final = rd.load_json(run, rd.FINAL_METRICS)
        step = summary.get("best_epoch", 0)
        self.pending_metrics += [
            Metric(k, v, stamp, step) for k, v in final_metrics(final, summary).items()
        ]
        tags, model_uri = [], None
        if self.settings.log_model and summary.get("encoder") != "custom":
            with tempfile.TemporaryDirectory(prefix="polytask-mlflow-") as scratch:
                save_pyfunc(run, Path(scratch) / MODEL_FOLDER)
                model = str(Path(scratch) / MODEL_FOLDER)
                self.client.log_artifacts(self.active_run_id, model, "model")
            model_uri = f"runs:/{self.run_id}/{MODEL_FOLDER}"
            tags.append(RunTag("polytask.model_uri", model_uri))
        self._flush(run, tags, model_uri=model_uri)  # before the copy: tracking.json is final
        if self.settings.log_artifacts:
            self.client.log_artifacts(self.active_run_id, str(run), RUN_FOLDER)
        self.client.set_terminated(self.active_run_id, RunStatus.to_string(RunStatus.FINISHED))

    def abort(self, status: str, reason: str) -> None:
        """Write what is buffered and mark the MLflow run KILLED or FAILED (a resumed run sets
        it running again). A run that never finished an epoch here leaves no trace."""
        if not self.begun:
            return
        folder = self.partial if self.partial.is_dir() else self.out
        with quiet_mlflow():
            self._flush(folder, [RunTag("polytask.stopped", reason[:5000])])
            self.client.set_terminated(self.active_run_id, status)

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
