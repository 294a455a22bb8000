"""Nash-MTL: the Nash bargaining solution between tasks.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
Bargaining Game", ICML 2022. The update ``d = sum_t alpha_t g_t`` maximises
``sum_t log <g_t, d>`` within a ball; its solution satisfies (their Claim 3.1)

    G alpha = 1 / alpha  (elementwise),   alpha > 0,

i.e. every task's directional derivative ``<g_t, d>`` is ``1 / alpha_t``. That system is the
stationarity condition of the strictly convex problem

    min_{alpha > 0}  f(alpha) = 1/2 alpha^T G alpha - sum_t log alpha_t,

(gradient ``G alpha - 1/alpha``, Hessian ``G + diag(1/alpha^2)``), which this module solves
by damped Newton steps to machine precision, instead of the authors' sequence of CVXPY
convex approximations (which only approximates the same point).
"""

from __future__ import annotations

import math

import torch

from polytask.balance._linalg import as_float64, like, zero_gradient_tasks
from polytask.balance.base import BALANCERS, GramianWeighting
from polytask.balance.options import NashMTLOptions

# A tiny ridge (relative to the mean squared gradient norm) makes the solution exist also
# when some non-negative combination of gradients cancels exactly (no bargaining point then).
RIDGE = 1e-12
MAX_NEWTON_STEPS = 100


def _objective(gramian: torch.Tensor, alpha: torch.Tensor) -> float:
    return float(0.5 * alpha @ gramian @ alpha - alpha.log().sum())


def solve_bargaining(gramian: torch.Tensor) -> torch.Tensor:
    """``alpha > 0`` [P] with ``G alpha = 1 / alpha`` for a positive-definite float64 ``G``,
    by damped Newton with backtracking (kept inside ``alpha > 0``)."""
    alpha = torch.diagonal(gramian).rsqrt()  # exact when the gradients are orthogonal
    for _ in range(MAX_NEWTON_STEPS):
        gradient = gramian @ alpha - 1.0 / alpha
        hessian = gramian + torch.diag(alpha.pow(-2))
        step = -torch.linalg.solve(hessian, gradient)
        decrement = float(-(gradient @ step))  # Newton decrement^2: f - min f ~ decrement/2
        if decrement <= 1e-24:
            break
        current, size = _objective(gramian, alpha), 1.0
        while size > 1e-12:
            candidate = alpha + size * step
            if bool((candidate > 0).all()) and _objective(gramian, candidate) <= (
                current - 0.25 * size * decrement
            ):
                break
            size /= 2
        else:
            break  # no progress is possible at float64 precision
        alpha = candidate
    return alpha


def nash_weights(gramian: torch.Tensor, normalize_gramian: bool = False) -> torch.Tensor:
    """Nash-MTL weights [P] (float64) for a Gramian [P, P].

    Tasks with a zero gradient gain nothing from any direction (their utility
    ``log <g_t, d>`` is -inf), so they are left out of the bargaining, with weight 0.
    ``normalize_gramian``: solve for ``G / |G|_F`` as the authors' code does, which scales
    every weight by ``sqrt(|G|_F)`` (the step then grows with the gradients; the authors
    clip its norm afterwards).
    """
    matrix = as_float64(gramian)
    size = matrix.shape[0]
    if size == 1:
        return torch.ones(1, dtype=torch.float64)
    keep = ~zero_gradient_tasks(matrix)
    weights = torch.zeros(size, dtype=torch.float64)
    if not bool(keep.any()):
        return weights
    sub = matrix[keep][:, keep]
    if normalize_gramian:
        sub = sub / torch.linalg.matrix_norm(sub)
    # solve at unit scale: for G = s G', alpha = alpha' / sqrt(s)
    scale = float(torch.diagonal(sub).mean())
    eye = torch.eye(sub.shape[0], dtype=torch.float64)
    weights[keep] = solve_bargaining(sub / scale + RIDGE * eye) / math.sqrt(scale)
    return weights


@BALANCERS.register("nash_mtl")
class NashMTL(GramianWeighting):
    """Options ``normalize_gramian`` (true reproduces the authors' scaling, see
    :func:`nash_weights`) and the base's ``every`` (default 1: solve every step;
    the authors' ``update_weights_every`` is 1 by default and 25 in some of their
    experiments, to save solver time). The authors' ``max_norm`` (clipping the shared
    parameters' gradient norm after the update) is not an option here: it is optimizer-level
    clipping, not part of the weighting.
    """

    Options = NashMTLOptions
    options: NashMTLOptions

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        return like(nash_weights(gramian, self.options.normalize_gramian), gramian)
