"""The MMoE paper's synthetic data (Ma et al., KDD 2018, section 3.2): two regression tasks
whose relatedness is set by the cosine between their weight vectors.

Generator: orthogonal unit vectors u1, u2 in R^d; w1 = c u1 and
w2 = c (p u1 + sqrt(1 - p^2) u2), so cos(w1, w2) = p; inputs x ~ N(0, I_d); labels
y_i = w_i^T x + sum_{j=1..m} sin(alpha_j w_i^T x + beta_j) + eps_i, eps_i ~ N(0, 0.01).
The sine terms (alpha, beta shared by both tasks) make the relation non-linear, so the
label correlation falls with p but is not equal to it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def make_mmoe_synthetic(
    correlation: float,
    rows: int = 10_000,
    dim: int = 100,
    num_sines: int = 10,
    scale: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """A frame with columns x0..x{dim-1} and the two labels y1, y2."""
    if not -1.0 <= correlation <= 1.0:
        raise ValueError("correlation must lie in [-1, 1]")
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
    u1, u2 = basis[:, 0], basis[:, 1]
    w1 = scale * u1
    w2 = scale * (correlation * u1 + np.sqrt(1.0 - correlation**2) * u2)
    alpha, beta = rng.standard_normal(num_sines), rng.standard_normal(num_sines)
    x = rng.standard_normal((rows, dim))

    def label(w: np.ndarray) -> np.ndarray:
        projection = x @ w
        waves = np.sin(np.outer(projection, alpha) + beta).sum(axis=1)
        return projection + waves + rng.normal(0.0, 0.1, size=rows)

    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(dim)])
    frame["y1"], frame["y2"] = label(w1), label(w2)
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
    train = frame.iloc[:rows].reset_index(drop=True)
    valid = frame.iloc[rows : rows + valid_rows].reset_index(drop=True)
    test = frame.iloc[rows + valid_rows :].reset_index(drop=True)
    return train, valid, test
