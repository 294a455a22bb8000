"""CAGrad: conflict-averse gradient descent.

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021. Among directions close to the mean gradient ``g0`` (the ball
``|d - g0| <= c |g0|``), take the one that maximises the worst task's first-order improvement:

    max_d  min_i <g_i, d>   s.t.  |d - g0| <= c |g0|.

Its dual is a convex problem on the simplex (the paper's eq. and the authors' code):

    w = argmin_{w in simplex}  g_w^T g0 + c |g0| |g_w|,   g_w = sum_i w_i g_i,

and the primal solution is ``d = g0 + (c |g0| / |g_w|) g_w``. In Gramian terms
``g_w^T g0 = w^T G 1 / P``, ``|g_w|^2 = w^T G w`` and ``|g0|^2 = 1^T G 1 / P^2``, so ``d``
is ``sum_t (1/P + lambda w_t) g_t`` with ``lambda = c |g0| / |g_w|``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize

from polytask.balance import _options
from polytask.balance._linalg import as_float64, like, normalised
from polytask.balance.base import BALANCERS, GramianWeighting

# |g_w| below this (relative to the largest gradient) counts as 0: then 0 is in the hull,
# the direction of g_w is undefined, and d = g0 is kept instead of dividing by ~0.
ZERO_NORM = 1e-9


def cagrad_dual_weights(gramian: torch.Tensor, radius: float) -> torch.Tensor:
    """``argmin_{w in simplex} w^T b + radius sqrt(w^T G w)``, ``b = G 1 / P`` (float64 [P]).

    Solved with SLSQP from the uniform start, with the exact gradient, as in the authors'
    code; the problem is convex, so the local solution is global.
    """
    matrix = gramian.numpy()
    size = matrix.shape[0]
    mean_row = matrix.mean(axis=1)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        gw_sq = max(float(w @ matrix @ w), 0.0) + 1e-18
        gw_norm = math.sqrt(gw_sq)
        value = float(w @ mean_row) + radius * gw_norm
        gradient = mean_row + radius * (matrix @ w) / gw_norm
        return value, gradient

    result = minimize(
        objective,
        np.full(size, 1.0 / size),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * size,
        constraints=[
            {"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(size)}
        ],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    weights = torch.from_numpy(np.clip(result.x, 0.0, None))
    return weights / weights.sum()


def cagrad_weights(gramian: torch.Tensor, c: float) -> torch.Tensor:
    """The CAGrad direction as weights [P] (float64, before any rescaling)."""
    matrix = normalised(as_float64(gramian))  # the weights are invariant to scaling G
    size = matrix.shape[0]
    uniform = torch.full((size,), 1.0 / size, dtype=torch.float64)
    g0_norm = math.sqrt(max(float(matrix.mean()), 0.0))  # |g0|^2 = 1^T G 1 / P^2
    if size == 1 or c == 0 or g0_norm <= ZERO_NORM:
        return uniform  # the ball is {g0}: d = g0
    radius = c * g0_norm
    w = cagrad_dual_weights(matrix, radius)
    gw_norm = math.sqrt(max(float(w @ matrix @ w), 0.0))
    if gw_norm <= ZERO_NORM:
        return uniform
    return uniform + (radius / gw_norm) * w


@BALANCERS.register("cagrad")
class CAGrad(GramianWeighting):
    """Options: ``c`` in [0, 1) (default 0.4; 0 gives the mean gradient); ``rescale``
    0 | 1 | 2 (default 1) as in the authors' code: 0 returns ``d``, 1 returns
    ``d / (1 + c^2)``, 2 returns ``d / (1 + c)``.

    With P = 1 the weight is 1 (the update is the task's own gradient).
    """

    def __init__(self, num_tasks: int, c: float = 0.4, rescale: int = 1, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        self.c = _options.real("c", c, low=0.0, high=1.0, high_open=True)
        self.rescale = _options.integer("rescale", rescale, low=0)
        if self.rescale > 2:
            raise TypeError(f"rescale must be 0, 1 or 2, got {rescale!r}")

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        if gramian.shape[0] == 1:
            return torch.ones(1, dtype=gramian.dtype, device=gramian.device)
        weights = cagrad_weights(gramian, self.c)
        divisor = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        return like(weights / divisor, gramian)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "c": self.c, "rescale": self.rescale}
