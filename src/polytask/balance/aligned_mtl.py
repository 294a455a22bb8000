"""Aligned-MTL: align the task gradients' principal components.

Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task
Learning", CVPR 2023 (Algorithm 1). A gradient system ``J`` [P, n] with a large condition
number lets one task dominate. With the eigendecomposition ``G = J J^T = V Lambda V^T``
(singular values ``sigma = sqrt(lambda)``), the aligned system

    J' = B J,   B = sigma_min V Sigma^{-1} V^T

has all its (non-zero) singular values equal to ``sigma_min`` (``B J = sigma_min V U^T``
for ``J = V Sigma U^T``): condition number 1, with the scale of the weakest component. The
update is ``J'^T w = J^T (B w)`` (B is symmetric), i.e. task weights ``B w``.
"""

from __future__ import annotations

import torch

from polytask.balance._linalg import as_float64, like
from polytask.balance.base import BALANCERS, GramianWeighting
from polytask.balance.options import AlignedMTLOptions


def balance_transformation(gramian: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """``B`` [P, P] (float64) for a PSD Gramian [P, P], restricted to its numerical rank.

    Eigenvalues at or below ``max(lambda) * P * eps`` are dropped as in the authors' code
    (``eps``: the machine epsilon of the Gramian's dtype, the precision it was computed
    in); ``sigma_min`` is then the smallest kept singular value. An all-zero Gramian gives
    the identity (nothing to align).
    """
    tolerance_eps = eps if eps is not None else torch.finfo(gramian.dtype).eps
    matrix = as_float64(gramian)
    size = matrix.shape[0]
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    tolerance = float(eigenvalues.max()) * size * tolerance_eps
    kept = eigenvalues > tolerance
    if float(eigenvalues.max()) <= 0 or not bool(kept.any()):
        return torch.eye(size, dtype=torch.float64)
    sigma = eigenvalues[kept].sqrt()
    basis = vectors[:, kept]
    return sigma.min() * (basis / sigma.unsqueeze(0)) @ basis.T


@BALANCERS.register("aligned_mtl")
class AlignedMTL(GramianWeighting):
    """Weights ``B 1`` (the paper's ``w`` with equal task preferences; LibMTL's
    ``B.sum(0)``). The config's static task weights are applied by the base afterwards,
    elementwise (``(B 1) * w_static``), not inside as ``B w_static``: the same with the
    default static weights of 1. No options besides the base's ``mode`` and ``every``.
    """

    Options = AlignedMTLOptions

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        if gramian.shape[0] == 1:
            return torch.ones(1, dtype=gramian.dtype, device=gramian.device)
        transform = balance_transformation(gramian)
        return like(transform.sum(dim=1), gramian)
