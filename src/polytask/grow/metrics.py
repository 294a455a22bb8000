"""Continual-learning metrics from the accuracy matrix (Lopez-Paz & Ranzato, NeurIPS 2017;
forgetting: Chaudhry et al., ECCV 2018).

``R[i][j]`` is the metric on task j after training experience i (None before task j is
seen); ``experience_of[j]`` is the experience that brought task j; ``before[j]`` is the
metric on task j just before its experience trained (the grown model at its initial weights)
and ``random[j]`` a randomly initialised model's. With E experiences:

- average = mean_j R[E-1][j];
- BWT = mean over tasks j not of the last experience of R[E-1][j] - R[e_j][j];
- FWT = mean over tasks j not of the first experience of before[j] - random[j];
- forgetting_j = max_{e_j <= l < E-1} R[l][j] - R[E-1][j], for the same tasks as BWT.

A metric that is undefined (no task qualifies) is None. Higher must be better.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Matrix = list[list[float | None]]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(
    matrix: Matrix,
    experience_of: list[int],
    before: list[float | None] | None = None,
    random: list[float | None] | None = None,
) -> dict[str, Any]:
    """Average metric, BWT, FWT and per-task forgetting (see the module docstring)."""
    last = len(matrix) - 1
    final = matrix[last]
    average = _mean([v for v in final if v is not None])
    backward: list[float] = []
    forgetting: list[float | None] = []
    for task, seen in enumerate(experience_of):
        if seen == last:
            forgetting.append(None)
            continue
        at_end, when_learned = final[task], matrix[seen][task]
        assert at_end is not None and when_learned is not None
        backward.append(at_end - when_learned)
        history = [matrix[step][task] for step in range(seen, last)]
        forgetting.append(max(v for v in history if v is not None) - at_end)
    forward: list[float] = []
    if before is not None and random is not None:
        for task, seen in enumerate(experience_of):
            b, r = before[task], random[task]
            if seen > 0 and b is not None and r is not None:
                forward.append(b - r)
    return {
        "average": average,
        "bwt": _mean(backward),
        "fwt": _mean(forward),
        "forgetting": forgetting,
        "mean_forgetting": _mean([f for f in forgetting if f is not None]),
    }


def plot_matrix(
    matrix: Matrix, tasks: list[str], experiences: list[str], title: str, path: Any
) -> None:
    """The accuracy matrix as an annotated heat map (rows: after experience i)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    width = max(4.0, 0.7 * len(tasks) + 2.0)
    height = max(3.0, 0.5 * len(experiences) + 1.5)
    figure, axes = plt.subplots(figsize=(width, height))
    image = axes.imshow(values, cmap="viridis", aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not np.isnan(values[i, j]):
                axes.text(
                    j,
                    i,
                    f"{values[i, j]:.3f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if values[i, j] < np.nanmean(values) else "black",
                )
    axes.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(experiences)), experiences, fontsize=8)
    axes.set_xlabel("task")
    axes.set_ylabel("after training experience")
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)
