"""Training with tracking: :func:`fit_tracked` is :func:`polytask.train.trainer.fit` plus, when
the run asks for it, an MLflow run that follows it through the trainer's epoch callbacks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from pydantic import ValidationError

from polytask.artifacts import run_dir as rd
from polytask.config import RunSpec, TrackSpec, format_validation_error
from polytask.errors import ConfigError
from polytask.optional import require
from polytask.train.trainer import EpochCallback, fit


def _settings(spec: RunSpec | None, out: Path, mlflow: str | bool | None) -> TrackSpec:
    """The run's ``track`` section (from its checkpoint folder on resume), with ``mlflow``
    from the command line taking precedence."""
    if spec is None:
        partial = rd.partial_path(rd.final_path(Path(out).resolve()))
        spec = rd.load_config(partial) if (partial / rd.CONFIG).is_file() else None
    settings = spec.track if spec is not None else TrackSpec()
    if mlflow is not None:
        try:
            settings = TrackSpec.model_validate({**settings.model_dump(), "mlflow": mlflow})
        except ValidationError as error:
            detail = format_validation_error(error, TrackSpec)
            raise ConfigError(f"--mlflow: track.{detail}") from None
    return settings


def fit_tracked(
    spec: RunSpec | None,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Iterable[EpochCallback] = (),
    encoder_factory: Callable[[], torch.nn.Module] | None = None,
    mlflow: str | bool | None = None,
) -> Path:
    """Train ``spec`` into ``out`` (see :func:`~polytask.train.trainer.fit`), tracked in MLflow
    when ``spec.track.mlflow`` or ``mlflow`` (a tracking URI, or True) asks for it."""
    if spec is not None and mlflow is not None and not resume:
        spec = spec.model_copy(deep=True)  # the saved config records where it was tracked
        spec.track = _settings(spec, Path(out), mlflow)
    settings = _settings(None if resume else spec, Path(out), mlflow)

    def train(epoch_callbacks: Iterable[EpochCallback]) -> Path:
        return fit(
            spec,
            out,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            callbacks=epoch_callbacks,
            encoder_factory=encoder_factory,
        )

    if not settings.enabled:
        return train(callbacks)
    require("mlflow", "MLflow tracking", "track")
    from polytask.track.mlflow_run import MlflowRun

    tracker = MlflowRun(settings, Path(out), resume=resume)
    tracker.connect()
    try:
        run = train([*callbacks, tracker.on_epoch])
    except KeyboardInterrupt:
        tracker.abort("KILLED", "interrupted; continue with polytask train --resume")
        raise
    except Exception as error:
        tracker.abort("FAILED", f"{type(error).__name__}: {error}")
        raise
    tracker.finish(run)
    return run
