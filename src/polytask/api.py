"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polytask.artifacts.predictor import Predictor
from polytask.config import RunSpec, load_spec
from polytask.train.trainer import EpochCallback, fit


def train(
    spec: RunSpec | dict[str, Any] | str | Path,
    out: str | Path = "runs/latest",
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    callbacks: list[EpochCallback] | None = None,
) -> Predictor:
    """Train a run specification (object, dict or YAML path) and return the loaded run."""
    run = fit(
        load_spec(spec),
        out,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        callbacks=callbacks or (),
    )
    return Predictor.load(run)


def load(run_dir: str | Path) -> Predictor:
    """Load a finished run directory for prediction and evaluation."""
    return Predictor.load(run_dir)
