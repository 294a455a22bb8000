"""Dense linear algebra on a small [P, P] task Gramian, shared by the Gramian-based methods.

Every solve here runs in float64 on the CPU: P is the number of present tasks (a handful), so
the cost is negligible next to the backward pass, and double precision keeps the optimality
conditions the tests check exact to ~1e-9. Methods convert back with :func:`like`.
"""

from __future__ import annotations

import numpy as np
import torch

# A task whose squared gradient norm is below this fraction of the largest one is treated as
# having a zero gradient (1e-16 on squared norms is 1e-8 on norms: float32 noise level).
ZERO_RTOL = 1e-16


def as_float64(gramian: torch.Tensor) -> torch.Tensor:
    """The Gramian [P, P] as a symmetric float64 CPU tensor (removes rounding asymmetry)."""
    matrix = gramian.detach().to(device="cpu", dtype=torch.float64)
    return (matrix + matrix.T) / 2


def like(weights: torch.Tensor, gramian: torch.Tensor) -> torch.Tensor:
    """``weights`` [P] on the device and in the dtype of ``gramian``."""
    return weights.to(device=gramian.device, dtype=gramian.dtype)


def zero_gradient_tasks(gramian: torch.Tensor) -> torch.Tensor:
    """[P] bool: tasks whose gradient is zero (relative to the largest one, or all zero)."""
    diagonal = torch.diagonal(gramian).clamp(min=0.0)
    largest = float(diagonal.max()) if diagonal.numel() else 0.0
    return diagonal <= ZERO_RTOL * largest if largest > 0 else torch.ones_like(diagonal).bool()


def normalised(gramian: torch.Tensor) -> torch.Tensor:
    """``G / max_t G_tt``: the same geometry at unit scale, for well-conditioned solves (the
    weights of MGDA, UPGrad, IMTL-G and CAGrad do not change when G is scaled)."""
    largest = float(torch.diagonal(gramian).max())
    return gramian / largest if largest > 0 else gramian


def gramian_root(gramian: torch.Tensor) -> torch.Tensor:
    """A square root ``L`` [P, P] with ``L^T L = G``, for PSD (possibly singular) ``G``.

    ``|L w|^2 = w^T G w = |J^T w|^2``: ``L`` is a P-dimensional stand-in for the task Jacobian
    ``J`` [P, n], so least-squares solvers can work on P x P data instead of n columns.
    """
    eigenvalues, vectors = torch.linalg.eigh(gramian)
    return torch.diag(eigenvalues.clamp(min=0.0).sqrt()) @ vectors.T


def nnls(matrix: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``argmin_{x >= 0} |A x - b|`` by the Lawson-Hanson active-set method (exact, finite).

    matrix: [m, P]; target: [m] -> [P] float64.
    """
    from scipy.optimize import nnls  # imported when used: scipy.optimize costs ~1 s

    solution, _ = nnls(np.asarray(matrix, dtype=np.float64), np.asarray(target, dtype=np.float64))
    return torch.from_numpy(np.asarray(solution, dtype=np.float64))


def hull_min_norm(columns: torch.Tensor) -> torch.Tensor:
    """``argmin_{w >= 0, sum w = 1} |A w|`` for columns ``A`` [m, P] (float64) -> w [P].

    The least-distance / NNLS duality (Lawson & Hanson, ch. 23): ``u = argmin_{u >= 0}
    |A u|^2 + (1^T u - 1)^2``, then ``w = u / 1^T u`` (see :func:`polytask.balance.mgda.
    min_norm_weights`, which calls this with a root of the Gramian). Columns are scaled to
    unit largest norm first; the minimiser does not change with the scale.
    """
    size = columns.shape[1]
    largest = float(columns.norm(dim=0).max()) if size else 0.0
    if size == 1 or largest <= 0:
        return torch.full((size,), 1.0 / size, dtype=torch.float64)
    system = torch.cat([columns / largest, torch.ones(1, size, dtype=torch.float64)])
    target = torch.zeros(system.shape[0], dtype=torch.float64)
    target[-1] = 1.0
    u = nnls(system, target)
    return u / u.sum()
