"""Balancing diagnostics: task weights over training, task-gradient cosines and conflicts.

Gradient statistics come from the Gramian of the per-task gradients whenever a step computed
one (gradient balancing methods do), or, with ``train.diagnostics_every: k``, from the cheap
Gramian at the shared representation every k steps for any method. A conflict is a pair of
tasks whose gradients have a negative inner product.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def cosine_matrix(gramian: torch.Tensor) -> torch.Tensor:
    """[T, T] cosines from a Gramian; rows of zero-gradient tasks are 0."""
    norms = gramian.diagonal().clamp(min=0).sqrt()
    scale = torch.outer(norms, norms)
    return torch.where(scale > 0, gramian / scale.clamp(min=1e-30), torch.zeros_like(gramian))


class BalanceDiagnostics:
    """Per-epoch running means of task weights, gradient cosines and the conflict rate."""

    def __init__(self, num_tasks: int) -> None:
        self.num_tasks = num_tasks
        self._reset()

    def _reset(self) -> None:
        self.weight_sum = torch.zeros(self.num_tasks)
        self.weight_count = torch.zeros(self.num_tasks)
        self.cosine_sum = torch.zeros(self.num_tasks, self.num_tasks)
        self.pair_count = torch.zeros(self.num_tasks, self.num_tasks)
        self.conflicts = 0.0
        self.pairs = 0.0

    def add(
        self, weights: torch.Tensor, present: torch.Tensor, gramian: torch.Tensor | None
    ) -> None:
        self.weight_sum += weights * present
        self.weight_count += present
        if gramian is None:
            return
        both = torch.outer(present, present).float()
        cosines = cosine_matrix(gramian.detach())
        self.cosine_sum += cosines * both
        self.pair_count += both
        upper = torch.triu(both, diagonal=1)
        self.conflicts += float(((cosines < 0).float() * upper).sum())
        self.pairs += float(upper.sum())

    def end_epoch(self, task_names: list[str]) -> dict[str, Any]:
        means = (self.weight_sum / self.weight_count.clamp(min=1)).tolist()
        row: dict[str, Any] = {"task_weights": dict(zip(task_names, means, strict=True))}
        if self.pairs > 0 or bool(self.pair_count.any()):
            cosine = self.cosine_sum / self.pair_count.clamp(min=1)
            row["gradient_cosine"] = cosine.tolist()
            row["conflict_rate"] = self.conflicts / self.pairs if self.pairs else None
        self._reset()
        return row


def plot_balance(history: list[dict[str, Any]], task_names: list[str], path: Path) -> None:
    """Task weights per epoch and, where measured, the mean gradient cosine of the last epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cosine = next(
        (row["gradient_cosine"] for row in reversed(history) if "gradient_cosine" in row), None
    )
    columns = 2 if cosine is not None else 1
    figure, axes = plt.subplots(1, columns, figsize=(5.2 * columns, 3.8), squeeze=False)
    epochs = [row["epoch"] for row in history]
    for name in task_names:
        axes[0, 0].plot(
            epochs, [row["task_weights"][name] for row in history], marker=".", label=name
        )
    axes[0, 0].set_xlabel("epoch")
    axes[0, 0].set_ylabel("mean task weight")
    axes[0, 0].set_title("task weights")
    axes[0, 0].legend(fontsize=7)
    if cosine is not None:
        image = axes[0, 1].imshow(cosine, cmap="coolwarm", vmin=-1, vmax=1)
        axes[0, 1].set_xticks(range(len(task_names)), labels=task_names, rotation=45, ha="right")
        axes[0, 1].set_yticks(range(len(task_names)), labels=task_names)
        rate = history[-1].get("conflict_rate")
        suffix = f" (conflicts {rate:.0%})" if rate is not None else ""
        axes[0, 1].set_title(f"gradient cosine, last epoch{suffix}")
        figure.colorbar(image, ax=axes[0, 1])
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)
