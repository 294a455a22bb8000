"""Confidence cascade: a slim model answers, and defers to the full model where it is unsure.

Why: most rows are easy. If a cheap (slim) model is confident on them, the expensive (full)
model is only needed for the rest, and the question is how much quality each share of deferred
rows buys. :meth:`Cascade.curve` answers it on labelled rows: for each confidence threshold it
reports the task metric of the cascade's outputs against the share of rows deferred.

Confidence is the probability of the predicted class: ``max(p, 1 - p)`` for a binary task, the
largest class probability for a multiclass one. A row is deferred when its confidence is
*below* the threshold, so a threshold of 0 (or anything up to 0.5 for binary) defers nothing
and the cascade is the slim model, and a threshold above 1 defers every row and the cascade is
the full model. Raising the threshold can only defer more rows.

The two runs are any two run directories that predict the same task (``polytask slim`` makes
such pairs); each transforms the raw rows with its own preprocessor, so their inputs may differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polytask.artifacts.atomic import write_atomic, write_json
from polytask.artifacts.ownership import OutputFolder
from polytask.config import TaskKind
from polytask.errors import DataError, PolytaskError, did_you_mean
from polytask.inference.predict import predict_logits
from polytask.inference.predictor import Predictor
from polytask.tasks import HIGHER_IS_BETTER, Task

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.5, 1.0, 21))
CASCADE_KINDS = (TaskKind.binary, TaskKind.multiclass)
# How close to the full model's metric counts as matching it (absolute, in metric units).
MATCH_TOLERANCE = 0.001
CASCADE_FILES = ("cascade.json", "cascade.png")  # what ``run_cascade`` writes, in that order


def confidence(probabilities: np.ndarray) -> np.ndarray:
    """Probability of the predicted class: ``max(p, 1-p)`` for binary ``[N]``, the row maximum
    for multiclass ``[N, K]``."""
    if probabilities.ndim == 1:
        return np.maximum(probabilities, 1.0 - probabilities)
    return probabilities.max(axis=1)


def _find_task(predictor: Predictor, name: str, role: str) -> Task:
    for task in predictor.tasks:
        if task.name == name:
            return task
    names = predictor.task_names
    raise PolytaskError(
        f"the {role} run {predictor.run} has no task '{name}'{did_you_mean(name, names)}; "
        f"its tasks: {', '.join(names)}"
    )


def _clean(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


class Cascade:
    """The slim and the full run for one binary or multiclass task."""

    def __init__(self, slim: Predictor, full: Predictor, task: str) -> None:
        self.slim, self.full = slim, full
        self.slim_task = _find_task(slim, task, "slim")
        self.full_task = _find_task(full, task, "full")
        kind = self.full_task.kind
        if kind not in CASCADE_KINDS:
            raise PolytaskError(
                f"task '{task}' is {kind.value}; a confidence cascade needs a binary or "
                "multiclass task (confidence is the probability of the predicted class)"
            )
        if self.slim_task.kind is not kind:
            raise PolytaskError(
                f"task '{task}' is {self.slim_task.kind.value} in the slim run but "
                f"{kind.value} in the full run"
            )
        if list(self.slim_task.classes) != list(self.full_task.classes):
            raise PolytaskError(
                f"task '{task}' has classes {self.slim_task.classes} in the slim run but "
                f"{self.full_task.classes} in the full run"
            )

    @property
    def task(self) -> Task:
        return self.full_task

    @staticmethod
    def probabilities(predictor: Predictor, task: Task, frame: pd.DataFrame) -> np.ndarray:
        """One task's probabilities for raw rows: ``[N]`` (binary) or ``[N, K]``."""
        if len(frame) == 0:
            return np.zeros((0,) if task.kind is TaskKind.binary else (0, task.out_dim))
        features = predictor.preprocessor.transform(frame)
        logits = predict_logits(
            predictor.serving_model, features, predictor.spec.train.eval_batch_size
        )
        index = predictor.task_names.index(task.name)
        return task.outputs(logits[index]).numpy().astype(np.float64)

    def predict(self, frame: pd.DataFrame, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Serve-time cascade: the slim model on every row, the full one only on the rows it
        defers. Returns the probabilities and the boolean mask of deferred rows."""
        outputs = self.probabilities(self.slim, self.slim_task, frame)
        deferred = confidence(outputs) < threshold
        if deferred.any():
            rows = frame.iloc[np.flatnonzero(deferred)]
            outputs[deferred] = self.probabilities(self.full, self.full_task, rows)
        return outputs, deferred

    def curve(
        self,
        frame: pd.DataFrame,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        tolerance: float = MATCH_TOLERANCE,
    ) -> dict[str, Any]:
        """Metric of the cascade against the share of rows deferred, per threshold.

        Both models predict every labelled row once; each threshold then only picks, per row,
        whose prediction counts. Rows without a label for the task are left out (they have no
        metric), so the deferred share is a share of the labelled rows.
        """
        task = self.full_task
        labels = self.full.preprocessor.encode_labels(frame, [task])[task.name].numpy()
        labelled = ~np.isnan(labels)
        if not labelled.any():
            raise DataError(f"no row has a label for task '{task.name}'")
        rows = frame.iloc[np.flatnonzero(labelled)]
        y = task.decode_labels(labels[labelled].astype(np.float64))
        slim = self.probabilities(self.slim, self.slim_task, rows)
        full = self.probabilities(self.full, self.full_task, rows)
        slim_confidence = confidence(slim)
        metric = task.primary_metric
        points = []
        for threshold in sorted(float(t) for t in thresholds):
            deferred = slim_confidence < threshold
            mixed = (
                np.where(deferred[:, None], full, slim)
                if slim.ndim == 2
                else (np.where(deferred, full, slim))
            )
            metrics = task.metrics(mixed, y)
            points.append(
                {
                    "threshold": threshold,
                    "deferred_rows": int(deferred.sum()),
                    "deferred_share": float(deferred.mean()),
                    "metric": _clean(metrics[metric]),
                    "metrics": {name: _clean(value) for name, value in metrics.items()},
                }
            )
        slim_metrics = task.metrics(slim, y)
        full_metrics = task.metrics(full, y)
        return {
            "task": task.name,
            "kind": task.kind.value,
            "metric": metric,
            "higher_is_better": HIGHER_IS_BETTER[metric],
            "slim": str(self.slim.run),
            "full": str(self.full.run),
            "rows": len(frame),
            "labelled_rows": len(rows),
            "slim_only": {name: _clean(value) for name, value in slim_metrics.items()},
            "full_only": {name: _clean(value) for name, value in full_metrics.items()},
            "points": points,
            "cheapest_matching_full": _cheapest_matching(
                points, full_metrics[metric], metric, tolerance
            ),
        }


def _cheapest_matching(
    points: list[dict[str, Any]], full_value: float, metric: str, tolerance: float
) -> dict[str, Any] | None:
    """The point with the fewest deferred rows whose metric is within ``tolerance`` of the full
    model's (or better): the headline answer to "how much of the full model's work can the slim
    one do". A tolerance, because an AUC that differs in the fifth digit is not a loss."""
    if not math.isfinite(full_value):
        return None
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    good = [
        p
        for p in points
        if p["metric"] is not None and sign * (p["metric"] - full_value) >= -tolerance
    ]
    if not good:
        return None
    best = min(good, key=lambda p: (p["deferred_share"], p["threshold"]))
    return {
        "threshold": best["threshold"],
        "deferred_share": best["deferred_share"],
        "metric": best["metric"],
        "tolerance": tolerance,
    }


def plot_curve(report: dict[str, Any], path: Path) -> None:
    """Draw metric vs deferred share (the cascade's cost/quality trade-off) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    points = [p for p in report["points"] if p["metric"] is not None]
    shares = [100.0 * p["deferred_share"] for p in points]
    values = [p["metric"] for p in points]
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    axes.plot(shares, values, marker="o", markersize=3, label="cascade")
    for name, style in (("slim_only", ":"), ("full_only", "--")):
        value = report[name].get(report["metric"])
        if value is not None:
            axes.axhline(value, linestyle=style, color="grey", label=f"{name.split('_')[0]} only")
    last_x = -math.inf
    for point, x, y in zip(points, shares, values, strict=True):
        if x - last_x < 4.0:  # label thresholds only where points are apart
            continue
        last_x = x
        axes.annotate(
            f"{point['threshold']:.3g}",
            (x, y),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=7,
        )
    axes.set_xlabel("rows deferred to the full model (%)")
    axes.set_ylabel(f"{report['task']}: {report['metric']}")
    axes.set_title(
        f"cascade {Path(report['slim']).name} -> {Path(report['full']).name} "
        f"({report['labelled_rows']} rows; labels: threshold)",
        fontsize=9,
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    write_atomic(path, lambda temp: figure.savefig(temp, dpi=120, format="png"))
    plt.close(figure)


def _loaded(run: Predictor | str | Path) -> Predictor:
    return run if isinstance(run, Predictor) else Predictor.load(run)


def run_cascade(
    slim_run: Predictor | str | Path,
    full_run: Predictor | str | Path,
    task: str,
    frame: pd.DataFrame,
    out: str | Path,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Load both runs (unless given loaded), compute the curve on ``frame``, write
    ``cascade.json`` and ``cascade.png`` into the new folder ``out`` (``overwrite``: replace
    an earlier cascade's folder there); return the report (with the paths)."""
    cascade = Cascade(_loaded(slim_run), _loaded(full_run), task)
    folder = Path(out)
    output = OutputFolder(
        folder,
        "cascade",
        CASCADE_FILES,
        overwrite=overwrite,
        sources=[cascade.slim.run, cascade.full.run],
    )
    output.claim()
    report = cascade.curve(frame, thresholds)
    json_name, plot_name = CASCADE_FILES
    report["files"] = {"json": str(folder / json_name), "plot": str(folder / plot_name)}
    temp = output.create()
    try:
        write_json(temp / json_name, report)
        plot_curve(report, temp / plot_name)
        output.publish()
    except BaseException:
        output.discard()
        raise
    return report
