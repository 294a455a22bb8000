"""MGDA: the min-norm point of the convex hull of the task gradients.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018. The
update ``d = sum_t w_t g_t`` with ``w = argmin_{w in simplex} |sum_t w_t g_t|^2`` is a
descent direction for every task at once (or zero at a Pareto-stationary point). On the
shared parameters (``mode: exact``) this is MGDA; on the gradients at the shared
representation (``mode: fast``) it is the paper's MGDA-UB upper-bound approximation, also
registered as ``mgda_ub`` with fast as its default.
"""

from __future__ import annotations

from typing import Literal

import torch

from polytask.balance._linalg import as_float64, gramian_root, hull_min_norm, like, normalised
from polytask.balance.base import BALANCERS, GramianWeighting
from polytask.balance.options import MGDAOptions, MGDAUBOptions

Normalization = Literal["none", "l2", "loss", "loss+"]


def min_norm_weights(gramian: torch.Tensor) -> torch.Tensor:
    """``argmin_{w >= 0, sum w = 1} w^T G w`` for a PSD Gramian [P, P] -> [P] float64.

    Solved exactly through the least-distance / NNLS duality (Lawson & Hanson, ch. 23):
    ``u = argmin_{u >= 0} |L u|^2 + (1^T u - 1)^2`` with ``L^T L = G``, then ``w = u / 1^T u``.
    The NNLS optimality conditions ``(G u)_t + (1^T u - 1) >= 0`` (equality where ``u_t > 0``)
    divided by ``s = 1^T u`` are exactly the simplex-QP conditions ``(G w)_t >= w^T G w``
    (equality on the support), with ``w^T G w = (1 - s) / s``. ``u`` is never 0, since
    ``u = e_t / (1 + G_tt)`` already beats it, so the division is safe; when 0 is in the hull
    the residual is 0 and ``w`` is a convex combination with ``J^T w = 0``.
    """
    matrix = as_float64(gramian)
    size = matrix.shape[0]
    if size == 1:
        return torch.ones(1, dtype=torch.float64)
    if float(torch.diagonal(matrix).max()) <= 0:  # every gradient is zero: any w is optimal
        return torch.full((size,), 1.0 / size, dtype=torch.float64)
    return hull_min_norm(gramian_root(normalised(matrix)))


def gradient_normalizers(
    gramian: torch.Tensor, losses: torch.Tensor, kind: Normalization
) -> torch.Tensor:
    """Sener & Koltun's per-task gradient scales [P] (their ``gradient_normalizers``):
    ``l2``: |g_t|; ``loss``: L_t; ``loss+``: L_t |g_t|; ``none``: 1. Losses enter as |L_t|
    (a negative loss must not flip its gradient), and scales that are zero (a zero gradient
    or a zero loss) are replaced by 1, so no division by zero happens."""
    norms = torch.diagonal(gramian).clamp(min=0.0).sqrt()
    values = losses.detach().to(torch.float64).abs()
    if kind == "l2":
        scales = norms
    elif kind == "loss":
        scales = values
    elif kind == "loss+":
        scales = values * norms
    else:
        scales = torch.ones_like(norms)
    return torch.where(scales > 0, scales, torch.ones_like(scales))


@BALANCERS.register("mgda")
class MGDA(GramianWeighting):
    """Min-norm weights on the simplex (exact by default: the paper's MGDA).

    Option ``normalize``: ``none`` (default) | ``l2`` | ``loss`` | ``loss+``. The Gramian of
    the normalised gradients ``g_t / n_t`` is ``G_st / (n_s n_t)``; as in the authors' code,
    the min-norm weights found for the normalised gradients are then applied to the ORIGINAL
    losses (LibMTL instead combines the normalised gradients, i.e. divides by ``n_t`` too).
    """

    Options = MGDAOptions
    options: MGDAOptions

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        matrix = as_float64(gramian)
        scales = gradient_normalizers(matrix, losses, self.options.normalize)
        weights = min_norm_weights(matrix / torch.outer(scales, scales))
        return like(weights, gramian)


@BALANCERS.register("mgda_ub")
class MGDAUB(MGDA):
    """MGDA-UB (Sener & Koltun, section 3.3): MGDA on the gradients at the shared
    representation, one backward pass through the towers only. Same options as ``mgda``;
    ``mode: exact`` turns it back into MGDA."""

    Options = MGDAUBOptions
