"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

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
    encoder_factory: Callable[[], nn.Module] | None = None,
) -> Predictor:
    """Train a run specification (object, dict or YAML path) and return the loaded run.

    ``encoder_factory`` builds your own input encoder (a module taking ``(categorical,
    numeric)`` with an ``out_dim`` attribute) instead of the one ``model.encoder`` names.
    """
    run = fit(
        load_spec(spec),
        out,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        callbacks=callbacks or (),
        encoder_factory=encoder_factory,
    )
    return Predictor.load(run, encoder_factory=encoder_factory)


def load(
    run_dir: str | Path, *, encoder_factory: Callable[[], nn.Module] | None = None
) -> Predictor:
    """Load a finished run directory for prediction and evaluation (a run trained with an
    ``encoder_factory`` needs the same factory), or a group study's folder (``polytask
    group``) as one model."""
    from polytask.artifacts.group import GroupPredictor, is_group

    if is_group(run_dir):
        return GroupPredictor.load(run_dir, encoder_factory=encoder_factory)
    return Predictor.load(run_dir, encoder_factory=encoder_factory)
