"""Task kinds: how a task's labels become a loss, predictions and metrics.

Missing labels are NaN in the label tensor; every loss and metric here masks them, because a
partially labelled table is the normal case in multi-task data, not an error.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from polytask.config import TaskKind, TaskSpec
from polytask.errors import ConfigError

HIGHER_IS_BETTER = {
    "auc": True,
    "mean_auc": True,
    "accuracy": True,
    "macro_f1": True,
    "r2": True,
    "logloss": False,
    "rmse": False,
    "mae": False,
}


@dataclass
class Task:
    """One task with its fitted label facts (number of classes, regression scale)."""

    spec: TaskSpec
    out_dim: int
    classes: list = field(default_factory=list)
    target_mean: float = 0.0
    target_std: float = 1.0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> TaskKind:
        return self.spec.kind

    @property
    def primary_metric(self) -> str:
        return self.spec.metrics[0]

    def present(self, labels: torch.Tensor) -> torch.Tensor:
        """Boolean mask of rows (or row x label cells) that carry a label."""
        return ~torch.isnan(labels)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss over labelled entries; exactly 0 (with a graph) when none is labelled.

        logits: [B, out_dim]; labels: [B] (or [B, L] for multilabel), NaN where missing.
        """
        mask = self.present(labels)
        count = mask.sum()
        safe = torch.where(mask, labels, torch.zeros_like(labels))
        if self.kind is TaskKind.multiclass:
            per_row = F.cross_entropy(logits, safe.long(), reduction="none")
        elif self.kind is TaskKind.binary:
            per_row = F.binary_cross_entropy_with_logits(logits[:, 0], safe, reduction="none")
        elif self.kind is TaskKind.multilabel:
            per_row = F.binary_cross_entropy_with_logits(logits, safe, reduction="none")
        else:
            prediction = logits[:, 0]
            if self.spec.loss == "l1":
                per_row = F.l1_loss(prediction, safe, reduction="none")
            elif self.spec.loss == "huber":
                per_row = F.huber_loss(prediction, safe, reduction="none")
            else:
                per_row = F.mse_loss(prediction, safe, reduction="none")
        return (per_row * mask).sum() / count.clamp(min=1)

    def outputs(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> user-scale predictions (probabilities, or regression values)."""
        if self.kind is TaskKind.multiclass:
            return torch.softmax(logits, dim=-1)
        if self.kind is TaskKind.binary:
            return torch.sigmoid(logits[:, 0])
        if self.kind is TaskKind.multilabel:
            return torch.sigmoid(logits)
        return logits[:, 0] * self.target_std + self.target_mean

    def decode_labels(self, labels: np.ndarray) -> np.ndarray:
        """Encoded labels -> the scale the user's metrics are reported in."""
        if self.kind is TaskKind.regression:
            return labels * self.target_std + self.target_mean
        return labels

    def metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Metrics on labelled rows only; predictions and labels both on the user's scale
        (class indices for multiclass)."""
        results: dict[str, float] = {}
        if self.kind is TaskKind.multilabel:
            mask = ~np.isnan(labels)
            aucs = [
                _auc(labels[mask[:, j], j], predictions[mask[:, j], j])
                for j in range(labels.shape[1])
            ]
            valid = [a for a in aucs if not math.isnan(a)]
            results["mean_auc"] = float(np.mean(valid)) if valid else math.nan
            return {m: results[m] for m in self.spec.metrics}
        mask = ~np.isnan(labels)
        y, p = labels[mask], predictions[mask]
        if len(y) == 0:
            return {m: math.nan for m in self.spec.metrics}
        for metric in self.spec.metrics:
            results[metric] = self._metric(metric, y, p)
        return results

    def _metric(self, metric: str, y: np.ndarray, p: np.ndarray) -> float:
        if metric == "auc":
            return _auc(y, p)
        if metric == "logloss":
            return _log_loss(y, p)
        if metric == "accuracy":
            predicted = p.argmax(axis=1) if p.ndim == 2 else (p >= 0.5)
            return float(np.mean(y.astype(int) == predicted.astype(int)))
        if metric == "macro_f1":
            from sklearn import metrics as skm  # imported when used: it costs ~1 s

            return float(
                skm.f1_score(
                    y.astype(int),
                    p.argmax(axis=1),
                    average="macro",
                    labels=list(range(self.out_dim)),
                    zero_division=0,
                )
            )
        if metric == "rmse":
            return float(np.sqrt(np.mean((p - y) ** 2)))
        if metric == "mae":
            return float(np.mean(np.abs(p - y)))
        if metric == "r2":
            if len(y) < 2:
                return math.nan
            total = float(np.sum((y - y.mean()) ** 2))
            residual = float(np.sum((y - p) ** 2))
            if total == 0.0:  # as scikit-learn: 1 for a perfect fit, 0 otherwise
                return 1.0 if residual == 0.0 else 0.0
            return 1.0 - residual / total
        raise ValueError(f"unknown metric {metric}")

    def normalised(self, metric: str, value: float, labels: np.ndarray) -> float:
        """A metric as a skill score: 1 is perfect, 0 is what the best constant predictor
        scores on these labels, below 0 is worse than it. So tasks whose metrics have
        different units and baselines can be averaged (``mean_normalised``). The mapping:

        ============  ==========================  ==========================================
        metric        skill score                 the constant predictor's value
        ============  ==========================  ==========================================
        auc,          ``2 * value - 1``           0.5 (any constant ranks nothing)
        mean_auc
        accuracy      ``(v - a0) / (1 - a0)``     a0: the share of the most frequent label
        macro_f1      ``(v - f0) / (1 - f0)``     f0 = (2 s / (1 + s)) / K: always the most
                                                  frequent class (share s) of K classes
        r2            ``value``                   0 (the label mean)
        logloss       ``1 - v / l0``              l0: log-loss of the label base rate
        rmse          ``1 - v / std(y)``          std(y): RMSE of the label mean
        mae           ``1 - v / mean|y - med|``   the MAE of the label median
        ============  ==========================  ==========================================

        NaN where the labels leave no room above the constant (a single class, no spread).
        """
        if metric in ("auc", "mean_auc"):
            return 2.0 * value - 1.0
        if metric == "r2":
            return value
        y = labels[~np.isnan(labels)]
        if len(y) == 0 or math.isnan(value):
            return math.nan
        if metric in ("accuracy", "macro_f1"):
            share = float(np.unique(y, return_counts=True)[1].max() / len(y))
            if metric == "accuracy":
                constant = share
            else:
                classes = self.out_dim if self.kind is TaskKind.multiclass else 2
                constant = 2.0 * share / (1.0 + share) / classes
            return (value - constant) / (1.0 - constant) if constant < 1.0 else math.nan
        if metric == "logloss":
            base_rate = float(np.clip(y.mean(), 1e-7, 1 - 1e-7))
            reference = _log_loss(y, np.full(len(y), base_rate))
        elif metric == "rmse":
            reference = float(np.std(y))
        else:
            reference = float(np.mean(np.abs(y - np.median(y))))
        return 1.0 - value / reference if reference > 0 else math.nan


def task_losses(
    outputs: list[torch.Tensor], labels: dict[str, torch.Tensor], tasks: list[Task]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task masked losses [T] and whether each task has any label in the batch [T]."""
    losses = torch.stack(
        [task.loss(out, labels[task.name]) for task, out in zip(tasks, outputs, strict=True)]
    )
    present = torch.stack([task.present(labels[task.name]).any() for task in tasks])
    return losses, present


def output_columns(tasks: list[Task]) -> dict[str, str]:
    """The prediction table's columns, each with what it holds, in order: binary and
    regression ``<task>``; multiclass ``<task>`` (the class) and ``<task>_p_<class>``;
    multilabel ``<task>_<column>``. Two tasks whose columns would share a name (task ``a``
    with class ``b`` and a task ``a_p_b``) are refused, naming both, rather than one silently
    overwriting the other."""
    columns: dict[str, str] = {}

    def add(column: str, meaning: str) -> None:
        if column in columns:
            raise ConfigError(
                f"output column '{column}' would hold both {columns[column]} and {meaning}; "
                "rename one of the tasks"
            )
        columns[column] = meaning

    for task in tasks:
        if task.kind is TaskKind.multiclass:
            add(task.name, f"task '{task.name}' (its class)")
            for label in task.classes:
                add(f"{task.name}_p_{label}", f"task '{task.name}' class '{label}'")
        elif task.kind is TaskKind.multilabel:
            for column in task.spec.columns:
                add(f"{task.name}_{column}", f"task '{task.name}' label '{column}'")
        else:
            add(task.name, f"task '{task.name}'")
    return columns


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities ``p`` (clipped to [1e-7, 1 - 1e-7])."""
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    if len(y) == 0 or len(np.unique(y)) < 2:
        warnings.warn("AUC is undefined where only one class is labelled", stacklevel=3)
        return math.nan
    from sklearn import metrics as skm  # imported when used: it costs ~1 s

    return float(skm.roc_auc_score(y, p))
