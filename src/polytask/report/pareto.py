"""The Pareto set of points under per-objective directions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def non_dominated(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[bool]:
    """For each point, whether no other point is at least as good on every objective and
    strictly better on one. Equal points do not dominate each other."""
    if len(points) == 0:
        return []
    signs = np.where(np.asarray(maximize, dtype=bool), 1.0, -1.0)
    values = np.asarray(points, dtype=float) * signs  # now: higher is better everywhere
    at_least = (values[:, None, :] >= values[None, :, :]).all(-1)  # [i, j]: i >= j everywhere
    better = (values[:, None, :] > values[None, :, :]).any(-1)
    dominates = at_least & better  # [i, j]: i dominates j
    dominated: np.ndarray = np.any(dominates, axis=0)  # [j]: some point dominates j
    return [not bool(dominated[j]) for j in range(len(points))]
