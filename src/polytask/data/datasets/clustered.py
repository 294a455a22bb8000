"""Regression tasks in clusters of known structure, for testing task grouping.

Built on the MMoE paper's generator (:mod:`polytask.data.datasets.synthetic`): every task is
``y_t = w_t^T x + sum_j sin(alpha_j w_t^T x + beta_j) + eps``. The weight vectors carry the
structure. With C clusters, cluster c has a centre u_c; the centres are the vertices of a
regular simplex (pairwise cosine -1/(C-1): clusters pull the shared features in opposing
directions, so they conflict). Task t of cluster c has

    w_t = within * u_c + sqrt(1 - within^2) * v_t,

with v_t a direction of its own orthogonal to everything else. So tasks of one cluster have
weight cosine ``within^2`` (related), tasks of different clusters ``-within^2 / (C - 1)``.

With ``disjoint_inputs`` the clusters instead read disjoint blocks of the inputs: the d inputs
are cut into C contiguous blocks (``numpy.array_split``) and cluster c's centre and its tasks'
own directions lie in block c only. A task's label then does not depend at all on another
cluster's inputs (weight cosine 0 across clusters, still ``within^2`` inside one). Why: on
simplex centres over the same inputs the clusters barely interfere, since one hidden feature
serves every cluster up to sign; on disjoint blocks a shared bottom must split its width among
the clusters' subspaces, so a narrow one makes the clusters compete for capacity, while a
model per cluster gives its cluster the whole width.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from polytask.data.datasets.synthetic import SineTaskFamily, split_rows


def cluster_labels(sizes: Sequence[int]) -> list[int]:
    """The cluster index of each task, tasks numbered cluster after cluster."""
    return [c for c, size in enumerate(sizes) for _ in range(size)]


def true_groups(sizes: Sequence[int], names: Sequence[str]) -> list[list[str]]:
    """The clusters as lists of task names."""
    groups: list[list[str]] = [[] for _ in sizes]
    for name, cluster in zip(names, cluster_labels(sizes), strict=True):
        groups[cluster].append(name)
    return groups


def clustered_family(
    sizes: Sequence[int] = (3, 3, 2),
    dim: int = 100,
    within: float = 0.9,
    num_sines: int = 10,
    noise: float = 0.1,
    seed: int = 0,
    cluster_sines: bool = False,
    disjoint_inputs: bool = False,
) -> SineTaskFamily:
    """The task functions: one weight vector per task, clusters as the module says; with
    ``cluster_sines`` each cluster draws its own sine terms (alpha, beta), so clusters also
    differ in their nonlinearity; with ``disjoint_inputs`` each cluster reads its own block
    of the inputs (module docstring)."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError("sizes must name at least two clusters of at least one task each")
    if not 0.0 <= within <= 1.0:
        raise ValueError("within must lie in [0, 1]")
    clusters = len(sizes)
    rng = np.random.default_rng(seed)
    if disjoint_inputs:
        centres, own = _block_directions(sizes, dim, rng)
    else:
        centres, own = _simplex_directions(sizes, dim, rng)
    membership = cluster_labels(sizes)
    weights = within * centres[membership] + np.sqrt(1.0 - within**2) * own
    alpha, beta = rng.standard_normal(num_sines), rng.standard_normal(num_sines)
    if cluster_sines:
        alpha = rng.standard_normal((clusters, num_sines))[membership]
        beta = rng.standard_normal((clusters, num_sines))[membership]
    return SineTaskFamily(weights, alpha, beta, noise)


def _simplex_directions(
    sizes: Sequence[int], dim: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Centres [C, d] on a regular simplex (pairwise cosine -1/(C-1)) and own directions
    [T, d], all orthonormal to one another but for the simplex, over all d inputs."""
    clusters, tasks = len(sizes), sum(sizes)
    if dim < clusters + tasks:
        raise ValueError(f"dim must be at least {clusters + tasks} (clusters + tasks)")
    basis, _ = np.linalg.qr(rng.standard_normal((dim, clusters + tasks)))
    corners = np.eye(clusters) - 1.0 / clusters  # a regular simplex, centred
    corners /= np.linalg.norm(corners, axis=1, keepdims=True)
    centres = corners @ basis[:, :clusters].T  # [C, d], unit, pairwise cosine -1/(C-1)
    return centres, basis[:, clusters:].T


def _block_directions(
    sizes: Sequence[int], dim: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Centres [C, d] and own directions [T, d], cluster c's all inside input block c
    (zero elsewhere) and orthonormal within it."""
    clusters = len(sizes)
    needed = clusters * (1 + max(sizes))
    if dim < needed:
        raise ValueError(
            f"dim must be at least {needed} with disjoint_inputs (each of the {clusters} "
            f"input blocks holds its cluster's centre and own directions)"
        )
    centres, own = np.zeros((clusters, dim)), []
    for c, block in enumerate(input_blocks(sizes, dim)):
        basis, _ = np.linalg.qr(rng.standard_normal((len(block), 1 + sizes[c])))
        centres[c, block] = basis[:, 0]
        directions = np.zeros((sizes[c], dim))
        directions[:, block] = basis[:, 1:].T
        own.append(directions)
    return centres, np.concatenate(own)


def input_blocks(sizes: Sequence[int], dim: int) -> list[list[int]]:
    """With ``disjoint_inputs``: the input indices each cluster reads, cluster by cluster."""
    return [block.tolist() for block in np.array_split(np.arange(dim), len(sizes))]


def load_clustered_tasks(
    sizes: Sequence[int] = (3, 3, 2),
    rows: int = 2_000,
    valid_rows: int = 1_000,
    test_rows: int = 2_000,
    dim: int = 100,
    within: float = 0.9,
    num_sines: int = 10,
    noise: float = 0.1,
    seed: int = 0,
    data_seed: int | None = None,
    cluster_sines: bool = False,
    disjoint_inputs: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train / valid / test frames with inputs x0..x{dim-1} and labels y0..y{T-1}.

    ``seed`` fixes the task functions; ``data_seed`` (default: ``seed``) the rows drawn;
    ``cluster_sines`` and ``disjoint_inputs`` as in :func:`clustered_family`."""
    family = clustered_family(
        sizes, dim, within, num_sines, noise, seed, cluster_sines, disjoint_inputs
    )
    rng = np.random.default_rng(seed if data_seed is None else data_seed)
    x, y = family.sample(rows + valid_rows + test_rows, rng)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(dim)])
    for t in range(family.num_tasks):
        frame[f"y{t}"] = y[:, t]
    return split_rows(frame, rows, valid_rows)
