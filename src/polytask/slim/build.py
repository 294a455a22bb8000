"""``polytask slim``: a standalone run directory holding only what some tasks use.

The slim run is an ordinary run directory (config, the same preprocessor, weights, metrics,
summary) plus ``slim.json``, the report; :func:`polytask.load` reads it and predicts the kept
tasks on raw rows. It is built in ``<out>.partial`` next to the destination, loaded back once
to prove it rebuilds, and only then swapped into place (what it may replace:
:mod:`polytask.artifacts.ownership`), so a failure never leaves a half-written slim run behind.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from polytask import __version__
from polytask.artifacts import run_dir as rd
from polytask.config import RunSpec, parse_spec
from polytask.data.tabular import load_run_splits, read_labelled
from polytask.data.weights import encode_weights, weight_columns
from polytask.errors import DataError, PolytaskError, did_you_mean
from polytask.features import Features
from polytask.inference.lean import save_model
from polytask.inference.predictor import Predictor
from polytask.slim.extract import Extraction, SlimContext, extract
from polytask.slim.report import (
    LATENCY_BATCHES,
    batch_of,
    latency_ms,
    max_difference,
    parameter_count,
    synthetic_rows,
    task_metrics,
    user_outputs,
)
from polytask.tasks import Task

SLIM_REPORT = "slim.json"
LATENCY_ROWS = 1024  # synthetic rows to time on when the run's data cannot be read


def resolve_tasks(requested: Sequence[str], names: list[str]) -> list[int]:
    """Task names -> indices in the run's task order (the slim model keeps that order)."""
    if not requested:
        raise PolytaskError(
            f"name the task(s) to keep with --tasks; the run has {', '.join(names)}"
        )
    for name in requested:
        if name not in names:
            raise PolytaskError(
                f"unknown task '{name}'{did_you_mean(name, names)}; the run's tasks: "
                f"{', '.join(names)}"
            )
    return sorted({names.index(name) for name in requested})


def check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise PolytaskError(f"--threshold must be a number in [0, 1) (got {threshold!r})")
    if math.isnan(threshold) or not 0.0 <= threshold < 1.0:
        raise PolytaskError(
            f"--threshold must be in [0, 1): a mean gate weight an expert must exceed to stay "
            f"(got {threshold:g})"
        )
    return float(threshold)


class Rows:
    """The labelled rows slimming measures on: a --data file, or the run's validation rows
    (its training rows if it has none). ``problem`` says why there are none."""

    def __init__(self, predictor: Predictor, data: str | Path | None) -> None:
        self.frame: pd.DataFrame | None = None
        self.test: pd.DataFrame | None = None
        self.source: str | None = None
        self.problem = ""
        self.split = "valid"
        if data is not None:
            spec = predictor.spec
            self.frame = read_labelled(data, spec.data, spec.target_columns)
            self.source, self.split = f"--data {data}", "data"
            return
        try:
            splits = load_run_splits(predictor.spec)
        except (PolytaskError, OSError) as error:
            self.problem = f"the run's data could not be read ({error})"
            return
        if splits.valid is not None and len(splits.valid):
            self.frame, self.source = splits.valid, "the run's validation rows"
        else:
            self.frame, self.split = splits.train, "train"
            self.source = "the run's training rows (it has no validation rows)"
        self.test = splits.test


@dataclass
class Labelled:
    """The kept tasks' encoded labels of some rows and their sample weights (the weighted
    tasks', ``data.weight``), or why there are none (``problem``)."""

    labels: dict[str, torch.Tensor] | None
    weights: dict[str, torch.Tensor]
    problem: str = ""


def _labels(predictor: Predictor, frame: pd.DataFrame, tasks: list[Task]) -> Labelled:
    try:
        labels = predictor.preprocessor.encode_labels(frame, tasks)
    except DataError:  # unlabelled rows still serve for gate usage and timing
        return Labelled(None, {}, "lack the kept tasks' labels")
    names = {task.name for task in tasks}
    weighted = {t: c for t, c in weight_columns(predictor.spec).items() if t in names}
    try:
        weights = encode_weights(frame, weighted, labels)
    except DataError as error:  # unweighted metrics would not be the run's metrics
        return Labelled(None, {}, f"cannot be weighted as the run is ({error})")
    return Labelled(labels, weights)


@dataclass
class Source:
    """The run being slimmed, the kept tasks and the rows it is measured on."""

    predictor: Predictor
    keep: list[int]
    rows: Rows
    features: Features | None  # the measured rows, preprocessed (None when there are none)

    @classmethod
    def open(
        cls,
        run: str | Path,
        tasks: Sequence[str],
        data: str | Path | None,
        encoder_factory: Callable[[], nn.Module] | None,
    ) -> Source:
        predictor = Predictor.load(run, encoder_factory=encoder_factory)
        keep = resolve_tasks(tasks, predictor.task_names)
        rows = Rows(predictor, data)
        frame = rows.frame
        features = predictor.preprocessor.transform(frame) if frame is not None else None
        return cls(predictor, keep, rows, features)

    @property
    def kept_tasks(self) -> list[Task]:
        return [self.predictor.tasks[t] for t in self.keep]

    @property
    def batch_size(self) -> int:
        return self.predictor.spec.train.eval_batch_size

    def context(self, threshold: float) -> SlimContext:
        return SlimContext(
            self.predictor.network(),
            self.predictor.spec.model,
            self.keep,
            threshold,
            self.features,
            batch_size=self.batch_size,
            rows_problem=self.rows.problem,
        )

    def timing_rows(self) -> Features:
        """The measured rows, or synthetic ones when the run's data cannot be read."""
        if self.features is not None:
            return self.features
        return synthetic_rows(self.predictor.preprocessor, LATENCY_ROWS)


@dataclass
class Latency:
    """How slimming times predictions: repeats per batch size, and the batch sizes."""

    repeats: int = 20
    batches: Sequence[int] = LATENCY_BATCHES


def slim(
    run: str | Path,
    tasks: Sequence[str],
    out: str | Path,
    *,
    threshold: float = 0.01,
    data: str | Path | None = None,
    overwrite: bool = False,
    encoder_factory: Callable[[], nn.Module] | None = None,
    latency_repeats: int = 20,
    latency_batches: Sequence[int] = LATENCY_BATCHES,
) -> dict[str, Any]:
    """Write a slim run for ``tasks`` of ``run`` into ``out`` and return its report.

    ``threshold`` (gated mixtures, row-routed task_moe): an expert stays when its mean gate
    weight for a kept task, on the measured rows, is above it. ``data``: labelled rows to
    measure on instead of the run's validation rows.
    """
    threshold = check_threshold(threshold)
    source = Source.open(run, tasks, data, encoder_factory)
    output = rd.run_folder(
        Path(out),
        overwrite=overwrite,
        sources=[source.predictor.run],
        files=rd.RUN_FILES | {SLIM_REPORT},
        kind="slim_run",
    )
    output.claim()
    extraction = extract(source.context(threshold))
    spec = _slim_spec(source.predictor.spec, source.keep, extraction)
    temp = output.create()
    try:
        reloaded = _write_run(temp, source, spec, extraction, threshold, encoder_factory)
        measured = _measure(source, reloaded, Latency(latency_repeats, latency_batches))
        report = _report(source, temp, Path(out), spec, extraction, threshold, measured)
        rd.save_json(temp, rd.FINAL_METRICS, _final_metrics(source, reloaded, report))
        rd.save_json(temp, SLIM_REPORT, report)
        rd.publish(output)
    except BaseException:
        output.discard()
        raise
    return report


def _write_run(
    folder: Path,
    source: Source,
    spec: RunSpec,
    extraction: Extraction,
    threshold: float,
    encoder_factory: Callable[[], nn.Module] | None,
) -> Predictor:
    """Config, the source's preprocessor, weights and summary; then load it back as a user
    would and check it computes what was extracted."""
    rd.save_config(folder, spec)
    shutil.copyfile(source.predictor.run / rd.PREPROCESSOR, folder / rd.PREPROCESSOR)
    save_model(folder, extraction.model)
    rd.save_json(folder, rd.SUMMARY, _summary(source.predictor, spec, extraction, threshold))
    return _reload(folder, extraction, source.kept_tasks, source.timing_rows(), encoder_factory)


def _report(
    source: Source,
    folder: Path,
    out: Path,
    spec: RunSpec,
    extraction: Extraction,
    threshold: float,
    measured: dict[str, Any],
) -> dict[str, Any]:
    """slim.json: what was kept, how exact, and what it changed (size, latency, metrics)."""
    predictor = source.predictor
    measured["full"]["weights_bytes"] = (predictor.run / rd.WEIGHTS).stat().st_size
    measured["slim"]["weights_bytes"] = (folder / rd.WEIGHTS).stat().st_size
    return {
        "source_run": str(predictor.run),
        "output": str(out),
        "arch": {"full": predictor.spec.model.arch, "slim": spec.model.arch},
        "tasks": measured["tasks"],
        "threshold": threshold,
        "exact": extraction.exact,
        "max_abs_difference": measured["max_abs_difference"],
        "rows": measured["rows"],
        "primary_metric": measured["primary_metric"],
        "full": measured["full"],
        "slim": measured["slim"],
        "experts": extraction.experts,
        "notes": [*extraction.notes, *measured["notes"]],
    }


def _final_metrics(
    source: Source, reloaded: Predictor, report: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """metrics.json of the slim run: the kept tasks' metrics on the split they were measured
    on, and on the run's test rows when it has labelled ones (none for --data rows)."""
    rows = source.rows
    if not report["slim"]["metrics"] or rows.split == "data":
        return {}
    metrics = {rows.split: report["slim"]["metrics"]}
    if rows.test is not None and len(rows.test):
        kept = source.kept_tasks
        test = _labels(source.predictor, rows.test, kept)
        if test.labels is not None:
            features = source.predictor.preprocessor.transform(rows.test)
            outputs = user_outputs(reloaded.serving_model, kept, features, source.batch_size)
            metrics["test"] = task_metrics(outputs, test.labels, kept, test.weights)
    return metrics


def _slim_spec(spec: RunSpec, keep: list[int], extraction: Extraction) -> RunSpec:
    """The run specification of the slim run: the kept tasks and the slim model. Validated
    through the same parser as any config, so the saved file loads."""
    raw = spec.to_yaml_dict()
    raw["tasks"] = [raw["tasks"][t] for t in keep]
    weight = raw["data"].get("weight")
    if isinstance(weight, dict):  # only the kept tasks' (a dropped task's is refused)
        kept = {task["name"] for task in raw["tasks"]}
        raw["data"]["weight"] = {t: c for t, c in weight.items() if t in kept} or None
    raw["model"] = extraction.spec.model_dump(mode="json")
    return parse_spec(raw)


def _reload(
    folder: Path,
    extraction: Extraction,
    tasks: list[Task],
    rows: Features,
    encoder_factory: Callable[[], nn.Module] | None,
) -> Predictor:
    """Load the written slim run as a user would and check it computes what was extracted."""
    reloaded = Predictor.load(folder, encoder_factory=encoder_factory)
    probe = batch_of(rows, min(len(rows), 256))
    with torch.inference_mode():
        expected = extraction.model.eval()(probe).logits
        got = reloaded.model(probe).logits
        served = reloaded.serving_model(probe).logits
    for task, left, right, lean in zip(tasks, expected, got, served, strict=True):
        if not torch.allclose(left, right, rtol=0.0, atol=1e-6, equal_nan=True):
            raise RuntimeError(f"slim: the saved model does not reproduce task '{task.name}'")
        if not torch.allclose(left, lean, rtol=1e-4, atol=1e-5, equal_nan=True):
            raise RuntimeError(f"slim: the serving form does not reproduce task '{task.name}'")
    return reloaded


def serving_form(predictor: Predictor) -> str:
    """'lean' when predictions run on the folded form (polytask.inference.lean), else 'eager'."""
    return "eager" if predictor.serving_model is predictor.model else "lean"


def _measure(source: Source, reloaded: Predictor, latency: Latency) -> dict[str, Any]:
    """Parameters, latency, metrics before/after and the largest output difference."""
    predictor, rows, features = source.predictor, source.rows, source.features
    kept_tasks = reloaded.tasks
    names = [task.name for task in kept_tasks]
    # Each model as served (its lean form where it has one) and as trained (eager), timed
    # interleaved: the report separates what slimming buys from what folding buys.
    full_served, slim_served, full_eager, slim_eager = latency_ms(
        [predictor.serving_model, reloaded.serving_model, predictor.model, reloaded.model],
        [predictor.tasks, kept_tasks, predictor.tasks, kept_tasks],
        source.timing_rows(),
        latency.batches,
        repeats=latency.repeats,
    )
    sides: dict[str, dict[str, Any]] = {
        "full": {
            "parameters": parameter_count(predictor.model),
            "serving_form": serving_form(predictor),
            "latency_ms": full_served,
            "latency_ms_eager": full_eager,
        },
        "slim": {
            "parameters": parameter_count(reloaded.model),
            "serving_form": serving_form(reloaded),
            "latency_ms": slim_served,
            "latency_ms_eager": slim_eager,
        },
    }
    difference = None
    notes: list[str] = []
    for side in sides.values():
        side["metrics"] = None
    if features is not None:
        batch_size = source.batch_size
        full_out = user_outputs(predictor.serving_model, predictor.tasks, features, batch_size)
        slim_out = user_outputs(reloaded.serving_model, kept_tasks, features, batch_size)
        difference = max_difference(full_out, slim_out)
        assert rows.frame is not None
        measured = _labels(predictor, rows.frame, kept_tasks)
        if measured.labels is None:
            notes.append(f"{rows.source} {measured.problem}: no metrics")
        else:
            for which, out in (("full", full_out), ("slim", slim_out)):
                sides[which]["metrics"] = task_metrics(
                    out, measured.labels, kept_tasks, measured.weights
                )
    else:
        notes.append(f"no metrics: {rows.problem}; latency timed on synthetic rows")
    dropped = [name for name in predictor.task_names if name not in names]
    return {
        "tasks": {"kept": names, "dropped": dropped},
        "primary_metric": {task.name: task.primary_metric for task in kept_tasks},
        "rows": {"source": rows.source, "count": len(features) if features is not None else 0},
        "max_abs_difference": difference,
        **sides,
        "notes": notes,
    }


def _summary(
    predictor: Predictor, spec: RunSpec, extraction: Extraction, threshold: float
) -> dict[str, Any]:
    """summary.json of the slim run: the keys a trained run has that still mean something,
    and where it came from."""
    kept = [task.name for task in spec.tasks]
    return {
        "polytask_version": __version__,
        "arch": spec.model.arch,
        "encoder": spec.model.encoder.name,
        "tasks": kept,
        "parameters": sum(p.numel() for p in extraction.model.parameters()),
        "slim": {
            "source_run": str(predictor.run),
            "source_arch": predictor.spec.model.arch,
            "dropped_tasks": [name for name in predictor.task_names if name not in kept],
            "threshold": threshold,
            "exact": extraction.exact,
        },
    }
