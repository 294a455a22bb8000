"""Choose task groups from an affinity matrix, as TAG does (Fifty et al. 2021, sec. 3.3).

A group G serves each of its tasks j with the mean affinity its other members have onto j,

    s(j, G) = mean_{i in G, i != j} Z[i, j]        (0 for a task alone: no transfer),

and a selection of at most K groups (a task may sit in several) is worth
``sum_j max_{G chosen, j in G} s(j, G)``: every task is served by the chosen group that
serves it best, and must be served by one. The selection maximising it is found by an
integer program (scipy's HiGHS): binary x_G (group chosen) and y_jG (task j served by G),
``sum_G y_jG = 1`` per task, ``y_jG <= x_G``, ``sum_G x_G <= K``.

- Exact for T <= ``EXACT_LIMIT`` tasks: the program ranges over all 2^T - 1 groups.
- Beyond, an approximation: the same program over a candidate pool (every single task and
  pair, and the groups met while growing a group greedily from every task, adding one at a
  time the task that gives the highest total s), so the optimum is exact only over that
  pool.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

EXACT_LIMIT = 12


@dataclass(frozen=True)
class Selection:
    """Chosen groups (task indices, sorted), the group serving each task, the total score
    and how it was searched."""

    groups: list[tuple[int, ...]]
    serving: list[int]
    score: float
    method: str

    def named(self, names: list[str]) -> list[list[str]]:
        return [[names[t] for t in group] for group in self.groups]


def serving_score(affinity: np.ndarray, task: int, group: tuple[int, ...]) -> float:
    """s(task, group): mean affinity of the other members onto ``task``."""
    others = [i for i in group if i != task]
    if not others:
        return 0.0
    return float(np.mean(affinity[others, task]))


def all_groups(num_tasks: int) -> list[tuple[int, ...]]:
    return [
        group
        for size in range(1, num_tasks + 1)
        for group in itertools.combinations(range(num_tasks), size)
    ]


def candidate_pool(affinity: np.ndarray) -> list[tuple[int, ...]]:
    """Singles, pairs, and every group met while growing a group greedily from each task
    (up to all tasks, so that any K can cover them)."""
    num_tasks = affinity.shape[0]
    pool: set[tuple[int, ...]] = {(t,) for t in range(num_tasks)}
    pool.update(itertools.combinations(range(num_tasks), 2))
    for start in range(num_tasks):
        group: tuple[int, ...] = (start,)
        while len(group) < num_tasks:
            grown = [
                tuple(sorted((*group, extra))) for extra in range(num_tasks) if extra not in group
            ]
            group = max(grown, key=lambda g: total_score(affinity, g))
            pool.add(group)
    return sorted(pool, key=lambda g: (len(g), g))


def total_score(affinity: np.ndarray, group: tuple[int, ...]) -> float:
    return sum(serving_score(affinity, task, group) for task in group)


def select_groups(affinity: np.ndarray, max_groups: int) -> Selection:
    """The best selection of at most ``max_groups`` groups (see the module docstring)."""
    affinity = np.nan_to_num(np.asarray(affinity, dtype=float))
    num_tasks = affinity.shape[0]
    if affinity.shape != (num_tasks, num_tasks) or num_tasks < 1:
        raise ValueError("affinity must be a square [T, T] matrix")
    if max_groups < 1:
        raise ValueError("max_groups must be at least 1")
    if num_tasks <= EXACT_LIMIT:
        groups, method = all_groups(num_tasks), f"exact (all {2**num_tasks - 1} groups)"
    else:
        groups = candidate_pool(affinity)
        method = f"approximate (integer program over a pool of {len(groups)} groups)"
    chosen, serving = _solve(affinity, groups, max_groups)
    score = sum(serving_score(affinity, t, groups[serving[t]]) for t in range(num_tasks))
    used = sorted(set(serving), key=lambda g: groups[g])
    index = {g: k for k, g in enumerate(used)}
    del chosen
    return Selection(
        [groups[g] for g in used], [index[serving[t]] for t in range(num_tasks)], score, method
    )


def _solve(
    affinity: np.ndarray, groups: list[tuple[int, ...]], max_groups: int
) -> tuple[list[int], list[int]]:
    """The integer program: chosen group indices, and per task the index of its server."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    num_tasks, num_groups = affinity.shape[0], len(groups)
    pairs = [(t, g) for g, group in enumerate(groups) for t in group]  # y variables
    num_vars = num_groups + len(pairs)
    cost = np.zeros(num_vars)
    for k, (task, g) in enumerate(pairs):
        cost[num_groups + k] = -serving_score(affinity, task, groups[g])
    rows, cols, values = [], [], []
    lower, upper = [], []
    row = 0
    for task in range(num_tasks):  # each task served exactly once
        for k, (t, _) in enumerate(pairs):
            if t == task:
                rows.append(row)
                cols.append(num_groups + k)
                values.append(1.0)
        lower.append(1.0)
        upper.append(1.0)
        row += 1
    for k, (_, g) in enumerate(pairs):  # y_jG <= x_G
        rows += [row, row]
        cols += [num_groups + k, g]
        values += [1.0, -1.0]
        lower.append(-np.inf)
        upper.append(0.0)
        row += 1
    rows += [row] * num_groups  # at most K groups
    cols += list(range(num_groups))
    values += [1.0] * num_groups
    lower.append(-np.inf)
    upper.append(float(max_groups))
    row += 1
    matrix = coo_matrix((values, (rows, cols)), shape=(row, num_vars)).tocsr()
    result = milp(
        cost,
        constraints=LinearConstraint(matrix, lower, upper),
        integrality=np.ones(num_vars),
        bounds=Bounds(0, 1),
    )
    if result.x is None:  # pragma: no cover - the program is always feasible (K >= 1)
        raise RuntimeError(f"group selection failed: {result.message}")
    x = np.round(result.x).astype(int)
    chosen = [g for g in range(num_groups) if x[g]]
    serving = [-1] * num_tasks
    for k, (task, g) in enumerate(pairs):
        if x[num_groups + k]:
            serving[task] = g
    return chosen, serving


def brute_force(affinity: np.ndarray, max_groups: int) -> float:
    """The best total by enumerating every combination of at most K groups (tiny T only):
    an independent check of :func:`select_groups`."""
    affinity = np.nan_to_num(np.asarray(affinity, dtype=float))
    num_tasks = affinity.shape[0]
    groups = all_groups(num_tasks)
    scores = np.array(
        [
            [serving_score(affinity, t, g) if t in g else -np.inf for g in groups]
            for t in range(num_tasks)
        ]
    )  # [T, G]
    best = -np.inf
    for size in range(1, max_groups + 1):
        for combo in itertools.combinations(range(len(groups)), size):
            value = scores[:, combo].max(axis=1)
            if np.isfinite(value).all():
                best = max(best, float(value.sum()))
    return best
