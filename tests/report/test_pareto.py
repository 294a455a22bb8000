"""The non-dominated filter against a direct reading of its definition."""

from __future__ import annotations

import numpy as np
import pytest

from polytask.report.pareto import non_dominated


def brute_force(points, maximize):
    def better_or_equal(a, b, up):
        return a >= b if up else a <= b

    keep = []
    for i, p in enumerate(points):
        dominated = False
        for j, q in enumerate(points):
            if i == j:
                continue
            if all(better_or_equal(q[k], p[k], maximize[k]) for k in range(len(p))) and any(
                q[k] != p[k] for k in range(len(p))
            ):
                dominated = True
        keep.append(not dominated)
    return keep


@pytest.mark.parametrize("seed", range(25))
def test_matches_the_definition(seed):
    rng = np.random.default_rng(seed)
    count, dims = int(rng.integers(1, 30)), int(rng.integers(1, 4))
    points = rng.integers(0, 6, size=(count, dims)).astype(float).tolist()  # ties on purpose
    maximize = rng.random(dims) < 0.5
    assert non_dominated(points, maximize) == brute_force(points, maximize)


def test_small_cases():
    assert non_dominated([], [True, True]) == []
    assert non_dominated([(1, 1), (1, 1)], [True, True]) == [True, True]
    assert non_dominated([(0.9, 20.0), (0.8, 10.0), (0.7, 30.0)], [True, False]) == [
        True,
        True,
        False,
    ]
