"""Evaluation: batched inference, per-task metrics, and the overall score.

The overall score is Delta-m (Maninis et al. 2019): the mean relative gain, in percent, of
each task's metrics over a single-task baseline run, signed so that positive is better. With
no baseline it is the mean normalised metric (each task's primary metric as a skill score,
see :meth:`polytask.tasks.Task.normalised`), and the summary says which one it is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from polytask.features import Features
from polytask.inference.predict import predict_logits
from polytask.tasks import HIGHER_IS_BETTER, Task, labelled_rows, task_losses


def evaluate(
    model: torch.nn.Module,
    features: Features,
    labels: dict[str, torch.Tensor],
    tasks: list[Task],
    batch_size: int,
    weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics per task, plus each task's masked loss under the key ``loss``; ``weights``:
    the sample weights of the tasks that have them."""
    # compute only the labelled (row, task) pairs (the same values where a model can either way)
    if getattr(model, "routes_rows", False) or getattr(model, "row_routable", False):
        features = features.asking(labelled_rows(labels, tasks))
    logits = predict_logits(model, features, batch_size)
    return evaluate_outputs(logits, labels, tasks, weights)


def _weights_of(weights: dict[str, torch.Tensor] | None, task: Task) -> np.ndarray | None:
    found = (weights or {}).get(task.name)
    return None if found is None else found.numpy()


def evaluate_outputs(
    logits: list[torch.Tensor],
    labels: dict[str, torch.Tensor],
    tasks: list[Task],
    weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics per task (and the masked loss under ``loss``) from per-task logits, whatever
    produced them (a run's model, or a baseline's predictions turned into logits)."""
    losses, _ = task_losses(logits, labels, tasks, weights)
    results = {}
    for task, task_logits, loss in zip(tasks, logits, losses, strict=True):
        predictions = task.outputs(task_logits).numpy()
        encoded = labels[task.name].numpy()
        decoded = task.decode_labels(encoded)
        task_metrics = task.metrics(predictions, decoded, _weights_of(weights, task))
        task_metrics["loss"] = float(loss)
        results[task.name] = task_metrics
    return results


def mean_normalised(
    results: dict[str, dict[str, float]],
    labels: dict[str, torch.Tensor],
    tasks: list[Task],
    weights: dict[str, torch.Tensor] | None = None,
) -> float:
    """Mean over tasks of the primary metric as a skill score (higher is better)."""
    scores = []
    for task in tasks:
        metric = task.primary_metric
        decoded = task.decode_labels(labels[task.name].numpy())
        value = results[task.name][metric]
        scores.append(task.normalised(metric, value, decoded, _weights_of(weights, task)))
    finite = [s for s in scores if not math.isnan(s)]
    return float(np.mean(finite)) if finite else math.nan


def delta_m(
    results: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]], tasks: list[Task]
) -> float:
    """Mean relative gain (percent) over the baseline, per metric then per task."""
    per_task = []
    for task in tasks:
        gains = []
        for metric in task.spec.metrics:
            ours = results[task.name].get(metric)
            theirs = baseline.get(task.name, {}).get(metric)
            if (
                ours is None
                or theirs is None
                or not theirs
                or math.isnan(ours)
                or math.isnan(theirs)
            ):
                continue
            sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
            gains.append(sign * (ours - theirs) / abs(theirs))
        if gains:
            per_task.append(float(np.mean(gains)))
    return 100.0 * float(np.mean(per_task)) if per_task else math.nan


def overall_score(
    results: dict[str, dict[str, float]],
    labels: dict[str, torch.Tensor],
    tasks: list[Task],
    baseline: dict[str, dict[str, float]] | None,
    baseline_path: str | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    if baseline is not None:
        return {
            "name": "delta_m",
            "value": delta_m(results, baseline, tasks),
            "unit": "percent",
            "baseline": baseline_path,
            "meaning": "mean relative gain over the single-task baseline run",
        }
    return {
        "name": "mean_normalised",
        "value": mean_normalised(results, labels, tasks, weights),
        "unit": "score",
        "baseline": None,
        "meaning": "mean of each task's primary metric as a skill score (no baseline given)",
    }
