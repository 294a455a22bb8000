"""Task kinds: how a task's labels become a loss, predictions and metrics.

Missing labels are NaN in the label tensor; every loss and metric here masks them, because a
partially labelled table is the normal case in multi-task data, not an error.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import numpy as np

from polytask.config import TaskKind, TaskSpec
from polytask.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where tensors are used: predicting from arrays needs none
    import torch

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
        return ~labels.isnan()

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean loss over labelled entries; exactly 0 (with a graph) when none is labelled.

        logits: [B, out_dim]; labels: [B] (or [B, L] for multilabel), NaN where missing;
        weights: [B] sample weights (``data.weight``), making it ``sum(w * loss) / sum(w)``
        over the labelled entries.
        """
        import torch
        import torch.nn.functional as F

        present = self.present(labels)
        if weights is not None and labels.ndim == 2:
            weights = weights[:, None]  # one weight per row, for each of its labels
        safe = torch.where(present, labels, torch.zeros_like(labels))
        if self.kind is TaskKind.multiclass:
            per_row = F.cross_entropy(logits, safe.long(), reduction="none")
        elif self.kind is TaskKind.multilabel:
            per_row = F.binary_cross_entropy_with_logits(logits, safe, reduction="none")
        else:
            per_row = _elementwise(self.batch_key, logits[:, 0], safe)
        return _masked_mean(per_row, present, weights, dims=None)

    def label_mass(self, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """What :meth:`loss` divides by: the number of labelled entries, or their summed
        sample weights (so that means over parts of a batch combine exactly)."""
        present = self.present(labels)
        if weights is None:
            return present.sum()
        if labels.ndim == 2:
            weights = weights[:, None]
        return (present * weights).sum()

    @property
    def batch_key(self) -> str:
        """Tasks of one key have one label column and one loss, computed for all of them in
        one pass (:func:`task_losses`): ``bce`` (binary), ``mse`` / ``l1`` / ``huber``
        (regression); ``""`` for the others."""
        if self.kind is TaskKind.binary:
            return "bce"
        if self.kind is TaskKind.regression:
            return str(self.spec.loss)
        return ""

    def outputs(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> user-scale predictions (probabilities, or regression values)."""
        if self.kind is TaskKind.multiclass:
            return logits.softmax(dim=-1)
        if self.kind is TaskKind.binary:
            return logits[:, 0].sigmoid()
        if self.kind is TaskKind.multilabel:
            return logits.sigmoid()
        return logits[:, 0] * self.target_std + self.target_mean

    def outputs_array(self, logits: np.ndarray) -> np.ndarray:
        """:meth:`outputs` on a numpy array (the torch-free prediction path), in float32."""
        if self.kind is TaskKind.multiclass:
            shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
            return shifted / shifted.sum(axis=-1, keepdims=True)
        if self.kind is TaskKind.binary:
            return _sigmoid(logits[:, 0])
        if self.kind is TaskKind.multilabel:
            return _sigmoid(logits)
        return logits[:, 0] * np.float32(self.target_std) + np.float32(self.target_mean)

    def decode_labels(self, labels: np.ndarray) -> np.ndarray:
        """Encoded labels -> the scale the user's metrics are reported in."""
        if self.kind is TaskKind.regression:
            return labels * self.target_std + self.target_mean
        return labels

    def metrics(
        self, predictions: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
    ) -> dict[str, float]:
        """Metrics on labelled rows only; predictions and labels both on the user's scale
        (class indices for multiclass). ``weights``: sample weights [N], each metric then
        counting a row ``w`` times (an integer weight k as k copies of the row)."""
        results: dict[str, float] = {}
        if self.kind is TaskKind.multilabel:
            mask = ~np.isnan(labels)
            aucs = [
                _auc(
                    labels[mask[:, j], j],
                    predictions[mask[:, j], j],
                    None if weights is None else weights[mask[:, j]],
                )
                for j in range(labels.shape[1])
            ]
            valid = [a for a in aucs if not math.isnan(a)]
            results["mean_auc"] = float(np.mean(valid)) if valid else math.nan
            return {m: results[m] for m in self.spec.metrics}
        mask = ~np.isnan(labels)
        y, p = labels[mask], predictions[mask]
        w = np.ones(len(y)) if weights is None else weights[mask].astype(np.float64)
        if len(y) == 0 or not w.sum() > 0:
            return {m: math.nan for m in self.spec.metrics}
        for metric in self.spec.metrics:
            results[metric] = self._metric(metric, y, p, w)
        return results

    def _metric(self, metric: str, y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
        if metric == "auc":
            return _auc(y, p, w)
        if metric == "logloss":
            return _log_loss(y, p, w)
        if metric == "accuracy":
            predicted = p.argmax(axis=1) if p.ndim == 2 else (p >= 0.5)
            return float(np.average(y.astype(int) == predicted.astype(int), weights=w))
        if metric == "macro_f1":
            return _macro_f1(y.astype(np.int64), p.argmax(axis=1), w, self.out_dim)
        if metric == "rmse":
            return float(np.sqrt(np.average((p - y) ** 2, weights=w)))
        if metric == "mae":
            return float(np.average(np.abs(p - y), weights=w))
        if metric == "r2":
            if len(y) < 2:
                return math.nan
            total = float(np.sum(w * (y - np.average(y, weights=w)) ** 2))
            residual = float(np.sum(w * (y - p) ** 2))
            if total == 0.0:  # as scikit-learn: 1 for a perfect fit, 0 otherwise
                return 1.0 if residual == 0.0 else 0.0
            return 1.0 - residual / total
        raise ValueError(f"unknown metric {metric}")

    def normalised(
        self, metric: str, value: float, labels: np.ndarray, weights: np.ndarray | None = None
    ) -> float:
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
        With sample ``weights``, the shares, means and spreads above are weighted alike.
        """
        if metric in ("auc", "mean_auc"):
            return 2.0 * value - 1.0
        if metric == "r2":
            return value
        present = ~np.isnan(labels)
        y = labels[present]
        w = np.ones(len(y)) if weights is None else weights[present].astype(np.float64)
        if len(y) == 0 or math.isnan(value) or not w.sum() > 0:
            return math.nan
        if metric in ("accuracy", "macro_f1"):
            _, codes = np.unique(y, return_inverse=True)
            share = float(np.bincount(codes, weights=w).max() / w.sum())
            if metric == "accuracy":
                constant = share
            else:
                classes = self.out_dim if self.kind is TaskKind.multiclass else 2
                constant = 2.0 * share / (1.0 + share) / classes
            return (value - constant) / (1.0 - constant) if constant < 1.0 else math.nan
        if metric == "logloss":
            base_rate = float(np.clip(np.average(y, weights=w), 1e-7, 1 - 1e-7))
            reference = _log_loss(y, np.full(len(y), base_rate), w)
        elif metric == "rmse":
            reference = float(np.sqrt(np.average((y - np.average(y, weights=w)) ** 2, weights=w)))
        else:
            reference = float(np.average(np.abs(y - _weighted_median(y, w)), weights=w))
        return 1.0 - value / reference if reference > 0 else math.nan


def labelled_rows(labels: dict[str, torch.Tensor], tasks: list[Task]) -> torch.Tensor:
    """[B, T] bool: whether row b has a label of task t (any column, for a multilabel task):
    the (row, task) pairs a model that routes rows by task needs to compute. Single-column
    labels are tested in one pass (with a hundred tasks, a hundred small ones cost more than
    the model's step)."""
    import torch

    single = [t for t, task in enumerate(tasks) if labels[task.name].dim() == 1]
    if len(single) == len(tasks):
        return ~torch.isnan(torch.stack([labels[task.name] for task in tasks], dim=1))
    first = labels[tasks[0].name]
    present = torch.empty(len(first), len(tasks), dtype=torch.bool, device=first.device)
    if single:
        stacked = torch.stack([labels[tasks[t].name] for t in single], dim=1)
        present[:, single] = ~torch.isnan(stacked)
    for t, task in enumerate(tasks):
        if labels[task.name].dim() > 1:
            present[:, t] = ~torch.isnan(labels[task.name]).all(dim=1)
    return present


def task_losses(
    outputs: list[torch.Tensor],
    labels: dict[str, torch.Tensor],
    tasks: list[Task],
    weights: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task masked losses [T] and whether each task has any label in the batch [T];
    ``weights``: the sample weights [B] of the tasks that have them.

    Tasks that share a :attr:`Task.batch_key` (binary tasks; regression tasks of one loss)
    are computed together, as [K, B] tensors: with a hundred tasks, one pass instead of a
    hundred small ones. Loss t still depends on output t alone."""
    import torch

    weights = weights or {}
    losses: list[torch.Tensor | None] = [None] * len(tasks)
    has_labels: list[torch.Tensor | None] = [None] * len(tasks)
    groups: dict[str, list[int]] = {}
    for index, task in enumerate(tasks):
        if task.batch_key:
            groups.setdefault(task.batch_key, []).append(index)
    for key, members in groups.items():
        if len(members) < 2:
            continue
        logits = torch.stack([outputs[i][:, 0] for i in members])  # [K, B]
        values = torch.stack([labels[tasks[i].name] for i in members])
        present = ~torch.isnan(values)
        safe = torch.where(present, values, torch.zeros_like(values))
        weighted = [weights.get(tasks[i].name) for i in members]
        row_weights = None
        if any(w is not None for w in weighted):
            ones = torch.ones(values.shape[1], device=values.device)
            row_weights = torch.stack([ones if w is None else w for w in weighted])
        per_entry = _elementwise(key, logits, safe)
        means = _masked_mean(per_entry, present, row_weights, 1)
        for i, loss, found in zip(members, means, present.any(1), strict=True):
            losses[i], has_labels[i] = loss, found
    for index, task in enumerate(tasks):
        if losses[index] is None:
            losses[index] = task.loss(outputs[index], labels[task.name], weights.get(task.name))
            has_labels[index] = task.present(labels[task.name]).any()
    stacked = torch.stack(cast(list[torch.Tensor], losses))
    return stacked, torch.stack(cast(list[torch.Tensor], has_labels))


def _elementwise(key: str, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The per-entry loss named by a :attr:`Task.batch_key`."""
    import torch.nn.functional as F

    if key == "bce":
        return F.binary_cross_entropy_with_logits(prediction, target, reduction="none")
    if key == "l1":
        return F.l1_loss(prediction, target, reduction="none")
    if key == "huber":
        return F.huber_loss(prediction, target, reduction="none")
    return F.mse_loss(prediction, target, reduction="none")


def _masked_mean(
    per_entry: torch.Tensor,
    present: torch.Tensor,
    weights: torch.Tensor | None,
    dims: int | None,
) -> torch.Tensor:
    """Mean of ``per_entry`` over labelled entries (over ``dims``, or all), weighted by
    ``weights`` where given: ``sum(w * loss) / sum(w)``; 0 where nothing is labelled."""
    import torch

    mask = present if weights is None else present * weights
    count = mask.sum() if dims is None else mask.sum(dims)
    total = (per_entry * mask).sum() if dims is None else (per_entry * mask).sum(dims)
    if weights is not None:  # weights may sum below 1: divide by them as they are
        return total / torch.where(count > 0, count, torch.ones_like(count))
    return total / count.clamp(min=1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow: exp of a non-positive number only."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


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


def _log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """Mean binary cross-entropy of probabilities ``p`` (clipped to [1e-7, 1 - 1e-7]),
    weighted by ``w``."""
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.average(y * np.log(p) + (1 - y) * np.log1p(-p), weights=w))


def _macro_f1(y: np.ndarray, predicted: np.ndarray, w: np.ndarray, classes: int) -> float:
    """Macro F1 over ``classes`` classes from the weighted counts: per class 2 TP / (2 TP +
    FP + FN), 0 for a class neither labelled nor predicted (scikit-learn's f1_score with
    ``labels=range(classes), zero_division=0``). Counted here because scikit-learn's input
    checks cost ~9 ms a call, more than the epoch of a small task in a continual stream."""
    hit = y == predicted
    true_positive = np.bincount(y[hit], weights=w[hit], minlength=classes)
    labelled = np.bincount(y, weights=w, minlength=classes)  # TP + FN
    chosen = np.bincount(predicted, weights=w, minlength=classes)  # TP + FP
    denominator = labelled + chosen
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros(classes), where=denominator > 0)
    return float(f1.mean())


def _auc(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    if len(y) == 0 or len(np.unique(y if w is None else y[w > 0])) < 2:
        warnings.warn("AUC is undefined where only one class is labelled", stacklevel=3)
        return math.nan
    from sklearn import metrics as skm  # imported when used: it costs ~1 s

    return float(skm.roc_auc_score(y, p, sample_weight=w))


def _weighted_median(y: np.ndarray, w: np.ndarray) -> float:
    """The smallest value with at least half the weight at or below it (the median for equal
    weights, up to the choice between the two middle values, which gives the same MAE)."""
    order = np.argsort(y, kind="stable")
    cumulative = np.cumsum(w[order])
    return float(y[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])
