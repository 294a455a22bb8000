"""Records task relations during training: the object the trainer calls every k steps.

Per epoch it averages the measurements of :func:`polytask.relations.affinity.measure`
(each pair over the steps where both tasks were labelled) and writes, into the run
directory, ``relations.json`` (every epoch's matrices, the mean over training and the time
spent measuring); ``relations.png`` (heat maps over training) is drawn when the run ends.
On ``--resume`` the file is read back and the epochs after the checkpoint are dropped, so
the record matches an uninterrupted run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polytask.artifacts import run_dir as rd
from polytask.artifacts.atomic import write_atomic
from polytask.config import RelationsSpec
from polytask.features import Features
from polytask.model import MultiTaskModel
from polytask.relations.affinity import measure
from polytask.tasks import Task

RELATIONS = "relations.json"
RELATIONS_PLOT = "relations.png"
UPDATE_RULE = (
    "Z[i][j] = 1 - L_j(theta_s - lr * g_i) / L_j(theta_s) on the training batch: a plain "
    "gradient step of the shared parameters on task i alone (task parameters unchanged)"
)


class RelationRecorder:
    """Accumulates affinity and gradient cosines over an epoch; writes them at its end."""

    def __init__(self, spec: RelationsSpec, task_names: list[str], folder: Path) -> None:
        self.spec = spec
        self.every = spec.every
        self.task_names = list(task_names)
        self.folder = folder
        self.epochs: list[dict[str, Any]] = []
        self._reset()

    def _reset(self) -> None:
        size = len(self.task_names)
        self.affinity_sum = torch.zeros(size, size, dtype=torch.float64)
        self.cosine_sum = torch.zeros(size, size, dtype=torch.float64)
        self.pairs = torch.zeros(size, size, dtype=torch.float64)
        self.measurements = 0
        self.seconds = 0.0

    def resume(self, epochs_done: int) -> None:
        """Continue a record written before a checkpoint at ``epochs_done`` epochs."""
        path = self.folder / RELATIONS
        if path.is_file():
            saved = rd.load_json(self.folder, RELATIONS)
            self.epochs = [row for row in saved["epochs"] if row["epoch"] <= epochs_done]

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def record(
        self,
        model: MultiTaskModel,
        features: Features,
        labels: dict[str, torch.Tensor],
        tasks: list[Task],
        optimizer: torch.optim.Optimizer,
        weights: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Measure on this batch (at most ``spec.rows`` of its rows) and add to the epoch;
        ``weights``: the batch's sample weights [B] per weighted task, which the losses
        measured honour as training does."""
        started = time.perf_counter()
        weights = weights or {}
        if self.spec.rows is not None and len(features) > self.spec.rows:
            rows = torch.arange(self.spec.rows, device=features.numeric.device)
            features = features.take(rows)
            labels = {name: values[rows] for name, values in labels.items()}
            weights = {name: values[rows] for name, values in weights.items()}
        lr = self.spec.lr if self.spec.lr is not None else optimizer.param_groups[0]["lr"]
        result = measure(model, features, labels, tasks, lr, weights)
        valid = result.valid.double()
        self.affinity_sum += result.affinity.double() * valid
        self.cosine_sum += result.cosine.double() * valid
        self.pairs += valid
        self.measurements += 1
        self.seconds += time.perf_counter() - started

    def end_epoch(self, epoch: int) -> None:
        """Close the epoch: its means join the record, which is rewritten (the plot is drawn
        once, by :meth:`finish`: drawing it every epoch would cost more than measuring)."""
        count = self.pairs.clamp(min=1)
        missing = self.pairs == 0
        affinity = (self.affinity_sum / count).masked_fill(missing, float("nan"))
        cosine = (self.cosine_sum / count).masked_fill(missing, float("nan"))
        self.epochs = [row for row in self.epochs if row["epoch"] < epoch]
        self.epochs.append(
            {
                "epoch": epoch,
                "affinity": affinity.tolist(),
                "gradient_cosine": cosine.tolist(),
                "pairs": self.pairs.tolist(),
                "measurements": self.measurements,
                "seconds": self.seconds,
            }
        )
        self._reset()
        self.write()

    def report(self) -> dict[str, Any]:
        return {
            "tasks": self.task_names,
            "every": self.every,
            "lr": self.spec.lr if self.spec.lr is not None else "the optimizer's current rate",
            "rows": self.spec.rows,
            "update_rule": UPDATE_RULE,
            "mean": mean_over_epochs(self.epochs),
            "seconds": sum(row["seconds"] for row in self.epochs),
            "epochs": self.epochs,
        }

    def write(self) -> None:
        rd.save_json(self.folder, RELATIONS, self.report())

    def finish(self) -> None:
        """Draw the heat maps of the whole record (the trainer calls this once, at the end)."""
        report = self.report()
        write_atomic(self.folder / RELATIONS_PLOT, lambda temp: plot_relations(report, temp))


def mean_over_epochs(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """The matrices averaged over every measurement of the run (pair counts as weights)."""
    if not epochs:
        return {"affinity": None, "gradient_cosine": None}
    pairs = np.array([row["pairs"] for row in epochs], dtype=float)  # [E, T, T]
    total = pairs.sum(axis=0)
    result: dict[str, Any] = {}
    for key in ("affinity", "gradient_cosine"):
        values = np.nan_to_num(np.array([row[key] for row in epochs], dtype=float))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (values * pairs).sum(axis=0) / total
        result[key] = np.where(total > 0, mean, np.nan).tolist()
    return result


def plot_relations(report: dict[str, Any], path: Path) -> None:
    """Heat maps of affinity and gradient cosine: a few epochs across training and the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = report["epochs"]
    picks = sorted({round(i * (len(epochs) - 1) / 3) for i in range(4)}) if epochs else []
    columns = [(f"epoch {epochs[i]['epoch']}", epochs[i]) for i in picks]
    columns.append(("mean over training", report["mean"]))
    names = report["tasks"]
    size = max(2.6, 0.28 * len(names) + 1.2)
    figure, axes = plt.subplots(
        2, len(columns), figsize=(size * len(columns), 2 * size), squeeze=False
    )
    for row, (key, title) in enumerate(
        (("affinity", "lookahead affinity Z[i->j]"), ("gradient_cosine", "gradient cosine"))
    ):
        for col, (label, source) in enumerate(columns):
            axis = axes[row, col]
            matrix = np.array(source[key], dtype=float) if source.get(key) is not None else None
            if matrix is None:
                axis.axis("off")
                continue
            limit = np.nanmax(np.abs(matrix)) if np.isfinite(matrix).any() else 1.0
            image = axis.imshow(matrix, cmap="RdBu", vmin=-limit, vmax=limit)
            axis.set_title(f"{title}\n{label}", fontsize=8)
            if len(names) <= 16:
                axis.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
                axis.set_yticks(range(len(names)), names, fontsize=6)
            else:
                axis.set_xticks([])
                axis.set_yticks([])
            figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)
