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

import torch

from polytask.balance._linalg import as_float64, gramian_root, hull_min_norm, like, normalised
from polytask.balance.base import BALANCERS, GramianWeighting
from polytask.balance.options import CAGradOptions

# |g_w| below this (relative to the largest gradient) counts as 0: then 0 is in the hull,
# the direction of g_w is undefined, and d = g0 is kept instead of dividing by ~0.
ZERO_NORM = 1e-9


def cagrad_dual_weights(gramian: torch.Tensor, radius: float) -> torch.Tensor:
    """``argmin_{w in simplex} w^T b + radius |g_w|``, ``b = G 1 / P`` (float64 [P]).

    Exactly, through a one-dimensional root: with ``L^T L = G`` (columns l_i standing in for
    the gradients) ``b = L^T l0``, ``l0`` the mean column. At the optimum ``w*``, with
    ``s* = |L w*|``, the conditions of optimality are those of the simplex QP
    ``min b^T w + radius |L w|^2 / (2 s*)``, which is ``min |(L + (s*/radius) l0 1^T) w|``:
    the min-norm point of the shifted hull, one NNLS (:func:`hull_min_norm`). So ``w*`` is
    ``w(s)`` at a root of ``h(s) = |L w(s)| - s``: ``h(0) >= 0``, ``h < 0`` beyond the
    longest column, and any root satisfies the convex problem's optimality conditions.
    Brent's method finds it in a few dozen NNLS solves; with ``h(0) = 0`` (0 in the hull)
    the minimiser is the plain min-norm point.
    """
    root = gramian_root(gramian)
    mean_column = root.mean(dim=1, keepdim=True)

    def weights_at(s: float) -> torch.Tensor:
        return hull_min_norm(root + (s / radius) * mean_column)

    def excess(s: float) -> float:
        return float((root @ weights_at(s)).norm()) - s

    start = excess(0.0)
    if start <= 0.0:
        return weights_at(0.0)
    beyond = float(root.norm(dim=0).max()) * (1.0 + 1e-9) + 1e-300
    from scipy.optimize import brentq  # imported when used: scipy.optimize costs ~1 s

    solution = brentq(excess, 0.0, beyond, xtol=1e-15, rtol=1e-13, maxiter=200)
    return weights_at(solution)


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
    """Options ``c`` (0 gives the mean gradient) and ``rescale``, as in the authors' code:
    0 returns ``d``, 1 returns ``d / (1 + c^2)``, 2 returns ``d / (1 + c)``.

    With P = 1 the weight is 1 (the update is the task's own gradient).
    """

    Options = CAGradOptions
    options: CAGradOptions

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        if gramian.shape[0] == 1:
            return torch.ones(1, dtype=gramian.dtype, device=gramian.device)
        c = self.options.c
        weights = cagrad_weights(gramian, c)
        divisor = {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[self.options.rescale]
        return like(weights / divisor, gramian)
