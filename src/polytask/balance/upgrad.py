"""UPGrad: unconflicting projection of gradients.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization" (2024; TorchJD). Each task
gradient ``g_i`` is projected onto the dual cone of the task gradients,
``{x : <g_t, x> >= 0 for all t}``, and the projections are averaged. The projection of
``J^T u`` onto that cone is ``J^T v`` with

    v = argmin_{v >= u}  v^T G v                     (a P-dimensional QP on the Gramian)

so with ``u = e_i`` the update is ``J^T w``, ``w = mean_i v_i``. Every projection has a
non-negative inner product with every task gradient, hence so does their mean: no task's
loss increases to first order.
"""

from __future__ import annotations

import torch

from polytask.balance._linalg import as_float64, gramian_root, like, nnls, normalised
from polytask.balance.base import BALANCERS, GramianWeighting
from polytask.balance.options import UPGradOptions


def dual_cone_solutions(gramian: torch.Tensor) -> torch.Tensor:
    """[P, P] (float64): row i is ``v_i = argmin_{v >= e_i} v^T G v``.

    With ``v = e_i + x`` and ``L^T L = G`` the QP is the non-negative least-squares problem
    ``min_{x >= 0} |L x + L e_i|^2``, solved exactly by the Lawson-Hanson active set
    (``x`` stays 0 on coordinates that do not lower the objective, e.g. zero gradients).
    The solutions do not change when ``G`` is scaled, so ``G`` is normalised first.
    """
    matrix = normalised(as_float64(gramian))
    root = gramian_root(matrix)
    size = matrix.shape[0]
    eye = torch.eye(size, dtype=torch.float64)
    return torch.stack([eye[i] + nnls(root, -root[:, i]) for i in range(size)])


@BALANCERS.register("upgrad")
class UPGrad(GramianWeighting):
    """Weights: the mean of the per-task dual-cone solutions (equal preferences, as
    TorchJD's default). No options besides the base's ``mode`` and ``every``."""

    Options = UPGradOptions

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        if gramian.shape[0] == 1:
            return torch.ones(1, dtype=gramian.dtype, device=gramian.device)
        return like(dual_cone_solutions(gramian).mean(dim=0), gramian)
