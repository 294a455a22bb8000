"""The MMoE paper's synthetic data (Ma et al., KDD 2018, section 3.2): regression tasks whose
relatedness is set by the cosines between their weight vectors.

Generator: inputs x ~ N(0, I_d); for a task with weight vector w,
y = w^T x + sum_{j=1..m} sin(alpha_j w^T x + beta_j) + eps, eps ~ N(0, noise^2), with
alpha_j, beta_j ~ N(0, 1) drawn once and shared by all tasks (the paper's nonlinearity; the
sine terms make the relation non-linear, so the label correlation falls with the weight
cosine but is not equal to it). The paper's pair: orthogonal unit vectors u1, u2 in R^d,
w1 = c u1 and w2 = c (p u1 + sqrt(1 - p^2) u2), so cos(w1, w2) = p.

A :class:`SineTaskFamily` holds the task functions and draws fresh rows on demand, so that a
study can sample new data every step (the paper's protocol) or build a fixed table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SineTaskFamily:
    """Fixed task functions; ``sample`` draws rows from them.

    weights: [T, d] one weight vector per task; alpha, beta: [m] the sine terms shared by
    all tasks, or [T, m] one set per task; noise: the label noise's standard deviation.
    """

    weights: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    noise: float = 0.1

    @property
    def num_tasks(self) -> int:
        return int(self.weights.shape[0])

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def labels(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """[N, T] noisy labels for inputs x [N, d]; noise is drawn task by task."""
        columns = []
        for t, w in enumerate(self.weights):
            alpha = self.alpha[t] if self.alpha.ndim == 2 else self.alpha
            beta = self.beta[t] if self.beta.ndim == 2 else self.beta
            projection = x @ w
            waves = np.sin(np.outer(projection, alpha) + beta).sum(axis=1)
            columns.append(projection + waves + rng.normal(0.0, self.noise, size=len(x)))
        return np.stack(columns, axis=1)

    def sample(self, rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Fresh inputs [rows, d] and their labels [rows, T]."""
        x = rng.standard_normal((rows, self.dim))
        return x, self.labels(x, rng)


def mmoe_family(
    correlation: float,
    dim: int = 100,
    num_sines: int = 10,
    scale: float = 1.0,
    rng: np.random.Generator | None = None,
    seed: int = 0,
) -> SineTaskFamily:
    """The paper's two tasks with weight cosine ``correlation`` (section 3.2)."""
    if not -1.0 <= correlation <= 1.0:
        raise ValueError("correlation must lie in [-1, 1]")
    rng = rng if rng is not None else np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
    u1, u2 = basis[:, 0], basis[:, 1]
    w1 = scale * u1
    w2 = scale * (correlation * u1 + np.sqrt(1.0 - correlation**2) * u2)
    alpha, beta = rng.standard_normal(num_sines), rng.standard_normal(num_sines)
    return SineTaskFamily(np.stack([w1, w2]), alpha, beta)


def make_mmoe_synthetic(
    correlation: float,
    rows: int = 10_000,
    dim: int = 100,
    num_sines: int = 10,
    scale: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """A frame with columns x0..x{dim-1} and the two labels y1, y2."""
    rng = np.random.default_rng(seed)
    family = mmoe_family(correlation, dim, num_sines, scale, rng=rng)
    x, y = family.sample(rows, rng)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(dim)])
    frame["y1"], frame["y2"] = y[:, 0], y[:, 1]
    return frame


def load_mmoe_synthetic(
    correlation: float = 0.9,
    rows: int = 10_000,
    dim: int = 100,
    num_sines: int = 10,
    seed: int = 0,
    valid_rows: int = 2_000,
    test_rows: int = 2_000,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train / valid / test drawn from one generator (same weights, fresh inputs)."""
    frame = make_mmoe_synthetic(
        correlation, rows + valid_rows + test_rows, dim, num_sines, seed=seed
    )
    return split_rows(frame, rows, valid_rows)


def split_rows(
    frame: pd.DataFrame, rows: int, valid_rows: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The first ``rows`` rows for training, the next ``valid_rows`` for validation, the rest
    for testing (each re-indexed from 0)."""
    train = frame.iloc[:rows].reset_index(drop=True)
    valid = frame.iloc[rows : rows + valid_rows].reset_index(drop=True)
    test = frame.iloc[rows + valid_rows :].reset_index(drop=True)
    return train, valid, test
