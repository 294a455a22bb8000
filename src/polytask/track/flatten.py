"""What a tracker records, as plain dicts: the run spec as flat parameters, an epoch's
``metrics.jsonl`` row and a finished run's metrics as flat, finite metrics.

Parameters keep the run spec's dotted keys (``model.arch``, ``tasks.0.name``: the keys a sweep
searches over); metrics use ``/`` so that MLflow groups them (``valid/income/auc``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# MLflow allows letters, digits, underscores, dashes, periods, spaces, colons and slashes.
_UNSAFE = re.compile(r"[^\w\-. :/]")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value


def safe_key(key: str) -> str:
    return _UNSAFE.sub("_", key)


def flatten_spec(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings and lists of mappings become dotted keys; other values become text."""
    if isinstance(value, dict) and value:
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(flatten_spec(item, f"{prefix}{key}."))
        return flat
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        flat = {}
        for index, item in enumerate(value):
            flat.update(flatten_spec(item, f"{prefix}{index}."))
        return flat
    text = value if isinstance(value, str) else json.dumps(value)
    return {safe_key(prefix.rstrip(".")): text[:MAX_PARAM_CHARS]}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _put(metrics: dict[str, float], key: str, value: Any) -> None:
    if _finite(value):
        metrics[safe_key(key)] = float(value)


def split_metrics(prefix: str, results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{task: {metric: value}}`` -> ``{prefix/task/metric: value}``, finite values only."""
    metrics: dict[str, float] = {}
    for task, values in results.items():
        for name, value in values.items():
            _put(metrics, f"{prefix}/{task}/{name}", value)
    return metrics


def epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    """One ``metrics.jsonl`` row: losses, rate, speed, validation metrics per task, task weights,
    conflict rate and the task-gradient cosines where measured. NaN and missing are left out."""
    metrics: dict[str, float] = {}
    for key in ("train_loss", "lr", "seconds", "rows_per_second", "monitor"):
        _put(metrics, key, row.get(key))
    for task, value in (row.get("train_task_loss") or {}).items():
        _put(metrics, f"train_loss/{task}", value)
    metrics.update(split_metrics("valid", row.get("valid") or {}))
    weights = row.get("task_weights") or {}
    for task, value in weights.items():
        _put(metrics, f"task_weight/{task}", value)
    _put(metrics, "conflict_rate", row.get("conflict_rate"))
    cosine = row.get("gradient_cosine")
    if cosine is not None:
        names = list(weights)
        for i, first in enumerate(names):
            for j in range(i + 1, len(names)):
                _put(metrics, f"gradient_cosine/{first}/{names[j]}", cosine[i][j])
    return metrics


def final_metrics(final: dict[str, Any], summary: dict[str, Any]) -> dict[str, float]:
    """A finished run: best-epoch validation and test metrics, the overall score per split,
    parameter count and training time."""
    metrics: dict[str, float] = {}
    for split, results in final.items():
        metrics.update(split_metrics(f"final/{split}", results))
    for split, score in (summary.get("score") or {}).items():
        _put(metrics, f"final/{split}/{score['name']}", score.get("value"))
    for key in ("parameters", "train_seconds", "best_epoch", "epochs_run"):
        _put(metrics, key, summary.get(key))
    return metrics
