"""Gradient episodic memory (GEM; Lopez-Paz & Ranzato, NeurIPS 2017).

Each old task k keeps an episodic memory; at every step its gradient g_k on that memory is
computed. When the step's gradient g conflicts with any of them (``g_k . g < 0``), g is
replaced by the solution of the QP

    min_{g~} |g~ - g|^2 / 2   s.t.  G g~ >= 0           (G: the g_k as rows),

solved, as the authors do, through its dual over K variables:

    min_{v >= margin}  v^T (G G^T + eps I) v / 2 + (G g)^T v,   g~ = G^T v + g

(``margin`` > 0 is the authors' ``memory_strength``, biasing towards positive transfer;
``eps`` keeps the K x K matrix definite). The dual is solved exactly: with ``u = v - margin``
it is a non-negative least-squares problem in a K x K square root of the matrix
(Lawson-Hanson, finite), the same solver the Gramian balancing methods use.
``project: stepped`` writes g~ only where the step's own loss reached, as in
:mod:`polytask.grow.strategies.agem`.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from polytask.grow.data import Rows
from polytask.grow.strategies._gradients import flat_grad, loss_grad, where_stepped, write_grad
from polytask.grow.strategies.agem import AGEM, ProjectionOptions
from polytask.grow.strategies.base import (
    STRATEGIES,
    ExperienceContext,
    rows_loss,
)
from polytask.model import MultiTaskModel
from polytask.tasks import Task
from polytask.train.hooks import StepHooks

ZERO_EIGENVALUE = 1e-12  # relative: directions of the Gramian no memory gradient spans


class GEMOptions(ProjectionOptions):
    margin: float = Field(0.5, ge=0.0, description="the dual's lower bound (memory_strength)")
    eps: float = Field(1e-3, ge=0.0, description="added to the dual's diagonal")


def gem_dual(gramian: torch.Tensor, products: torch.Tensor, margin: float, eps: float):
    """``argmin_{v >= margin} v^T (M + eps I) v / 2 + b^T v`` exactly (float64 [K]), for
    ``M`` = G G^T [K, K] and ``b`` = G g [K].

    With ``P = M + eps I = V diag(l) V^T`` and ``u = v - margin`` the objective is
    ``u^T P u / 2 + c^T u`` (``c = b + margin P 1``, in the range of P since b = G g is),
    which is ``|R u - t|^2 / 2`` up to a constant for ``R = diag(sqrt l) V^T`` and
    ``t = -diag(1 / sqrt l) V^T c`` over the non-zero eigenvalues: one NNLS.
    """
    matrix = gramian.double() + eps * torch.eye(gramian.shape[0], dtype=torch.float64)
    matrix = (matrix + matrix.T) / 2
    linear = products.double() + margin * matrix.sum(1)
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    keep = eigenvalues > ZERO_EIGENVALUE * max(float(eigenvalues.max()), 0.0)
    roots = eigenvalues[keep].sqrt()
    basis = vectors[:, keep]
    root = roots.unsqueeze(1) * basis.T  # [r, K]: root^T root = matrix
    target = -(basis.T @ linear) / roots
    from scipy.optimize import nnls  # imported when used: scipy.optimize costs ~1 s

    solution, _ = nnls(root.numpy(), target.numpy())
    return torch.from_numpy(solution).double() + margin


class EpisodicConstraints(StepHooks):
    def __init__(self, memories: list[tuple[Task, Rows]], options: GEMOptions) -> None:
        self.memories, self.options = memories, options
        self.projected = 0

    def before_update(self, model: nn.Module) -> None:
        assert isinstance(model, MultiTaskModel)
        parameters = [p for p in model.parameters() if p.requires_grad]
        constraints = torch.stack(
            [loss_grad(rows_loss(model, rows, [task]), parameters) for task, rows in self.memories]
        )
        gradient = flat_grad(parameters)
        products = constraints @ gradient
        if not bool((products < 0).any()):
            return
        constraints64 = constraints.double()
        v = gem_dual(
            constraints64 @ constraints64.T,
            constraints64 @ gradient.double(),
            self.options.margin,
            self.options.eps,
        )
        projected = (constraints64.T @ v + gradient.double()).to(gradient.dtype)
        if self.options.project == "stepped":
            projected = where_stepped(projected, gradient)
        write_grad(parameters, projected)
        self.projected += 1


@STRATEGIES.register("gem")
class GEM(AGEM):
    """GEM: the closest gradient that does not increase any old task's memory loss (a QP)."""

    Options = GEMOptions
    summary = "GEM: per-task memory constraints on the gradient, exact QP"

    def begin(self, context: ExperienceContext) -> StepHooks | None:
        assert isinstance(self.options, GEMOptions)
        old = self.fill(context)
        memories = [
            (task, buffer.rows)
            for task in old
            if (buffer := self.buffers.buffers.get(task.name)) is not None
            and buffer.rows is not None
        ]
        return EpisodicConstraints(memories, self.options) if memories else None
