"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polytask.config import RunSpec, check_unused, load_spec
from polytask.inference.predictor import Predictor

if TYPE_CHECKING:
    from torch import nn

    from polytask.train.trainer import EpochCallback


def train(
    spec: RunSpec | dict[str, Any] | str | Path,
    out: str | Path = "runs/latest",
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    callbacks: list[EpochCallback] | None = None,
    encoder_factory: Callable[[], nn.Module] | None = None,
    strict: bool = False,
    mlflow: str | bool | None = None,
) -> Predictor:
    """Train a run specification (object, dict or YAML path) and return the loaded run.

    ``encoder_factory`` builds your own input encoder (a module taking ``(categorical,
    numeric)`` with an ``out_dim`` attribute) instead of the one ``model.encoder`` names.
    Keys the run would not use are a :class:`~polytask.errors.PolytaskWarning` (an error with
    ``strict``). ``overwrite`` replaces only a run that polytask wrote
    (:mod:`polytask.artifacts.ownership`). ``mlflow`` (True or a tracking URI) tracks the run in
    MLflow, as ``track.mlflow`` does.
    """
    from polytask.track import fit_tracked  # training code only when training

    spec = load_spec(spec)
    if not resume:
        check_unused(spec, strict=strict)
    run = fit_tracked(
        spec,
        out,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        callbacks=callbacks or (),
        encoder_factory=encoder_factory,
        mlflow=mlflow,
    )
    return Predictor.load(run, encoder_factory=encoder_factory)


def load(
    run_dir: str | Path, *, encoder_factory: Callable[[], nn.Module] | None = None
) -> Predictor:
    """Load a finished run directory for prediction and evaluation (a run trained with an
    ``encoder_factory`` needs the same factory), or a group study's folder (``polytask
    group``) as one model."""
    return Predictor.load(run_dir, encoder_factory=encoder_factory)


def finetune(
    base: str | Path,
    spec: str | Path | dict[str, Any],
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Predictor:
    """Fine-tune the run ``base`` on the tasks ``spec`` (a YAML path or dict: tasks, data,
    moves, train) names, from the base's weights and preprocessor; return the loaded run."""
    from polytask.merge.finetune import finetune as finetune_run

    return Predictor.load(finetune_run(base, spec, out, overwrite=overwrite, progress=progress))


def merge(
    runs: list[str | Path],
    base: str | Path,
    method: str,
    out: str | Path,
    *,
    options: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Predictor:
    """Merge runs fine-tuned from ``base`` (``polytask.finetune``) with ``method`` and its
    ``options`` into one run at ``out``; return the loaded run (``summary()["merge"]`` says
    what was merged and how long it took)."""
    from polytask.merge.runs import merge as merge_runs

    merge_runs(runs, base, method, options, out, overwrite=overwrite)
    return Predictor.load(out)


def grow(
    run: str | Path,
    spec: dict[str, Any] | str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Predictor:
    """Add the tasks of ``spec`` (a grow spec: dict or YAML path) to the finished run ``run``
    with its strategy, into the new run directory ``out``; return the loaded grown run (its
    history is ``out/grow.json``)."""
    from polytask.grow import grow as grow_run

    grow_run(run, spec, out, overwrite=overwrite, progress=progress)
    return Predictor.load(out)


def stream(
    spec: dict[str, Any] | str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Train the experiences of ``spec`` (a stream spec) one after another into ``out``;
    return the accuracy matrix and its metrics (also ``out/stream.json``)."""
    from polytask.grow.stream import stream as run_stream

    return run_stream(spec, out, overwrite=overwrite, progress=progress)
