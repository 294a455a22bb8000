"""IMTL: impartial multi-task learning.

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021. Two parts, usable alone or together (``variant``):

- IMTL-G (gradient balance): weights ``alpha`` with ``sum alpha = 1`` such that the update
  ``d = sum_t alpha_t g_t`` has EQUAL projections on every task's unit gradient
  ``u_t = g_t / |g_t|``. With task 1 as reference, ``D = [g_1 - g_t]``, ``U = [u_1 - u_t]``
  (t = 2..P), the closed form is ``alpha_{2:} = g_1 U^T (D U^T)^{-1}``,
  ``alpha_1 = 1 - sum alpha_{2:}``; every inner product is a Gramian entry divided by norms.
- IMTL-L (loss balance): each loss is scaled as ``e^{s_t} L_t - s_t`` with a learned
  ``s_t``; at the optimum over ``s_t``, ``e^{s_t} L_t = 1``: every scaled loss is 1.
- both (the paper's IMTL): IMTL-G on the gradients of the scaled losses
  (``e^{s_t} g_t``, Gramian ``diag(e^s) G diag(e^s)``), so the loss weights are
  ``alpha_t e^{s_t}``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from polytask.balance._linalg import as_float64, like, normalised, zero_gradient_tasks
from polytask.balance.base import BALANCERS, GramianWeighting, Need, StepContext
from polytask.balance.options import IMTLOptions


def imtl_g_weights(gramian: torch.Tensor) -> torch.Tensor:
    """IMTL-G weights [P] (float64, summing to 1 over tasks with a non-zero gradient).

    A task with a zero gradient has no unit gradient to project on: it is left out of the
    balance and gets weight 0. ``(D U^T)`` is inverted with a pseudo-inverse, so identical
    gradients (a zero row of D and U, any weight works) give a finite answer.
    """
    matrix = as_float64(gramian)
    size = matrix.shape[0]
    if size == 1:
        return torch.ones(1, dtype=torch.float64)
    keep = ~zero_gradient_tasks(matrix)
    if not bool(keep.any()):
        return torch.full((size,), 1.0 / size, dtype=torch.float64)
    weights = torch.zeros(size, dtype=torch.float64)
    weights[keep] = _imtl_g_closed_form(normalised(matrix[keep][:, keep]))
    return weights


def _imtl_g_closed_form(gramian: torch.Tensor) -> torch.Tensor:
    """``alpha = [1 - sum a, a]``, ``a = g_1 U^T (D U^T)^{-1}``; all gradients non-zero."""
    if gramian.shape[0] == 1:
        return torch.ones(1, dtype=torch.float64)
    norms = torch.diagonal(gramian).sqrt()
    # P[s, t] = <g_s, u_t> = G_st / |g_t|
    proj = gramian / norms.unsqueeze(0)
    # <g_1, u_1 - u_t> for t >= 2: [P-1]
    g1_u = proj[0, 0] - proj[0, 1:]
    # <g_1 - g_s, u_1 - u_t> for s, t >= 2: [P-1, P-1]
    d_u = (proj[0, 0] - proj[0, 1:]).unsqueeze(0) - (proj[1:, :1] - proj[1:, 1:])
    rest = g1_u @ torch.linalg.pinv(d_u)
    return torch.cat([(1.0 - rest.sum()).reshape(1), rest])


@BALANCERS.register("imtl")
class IMTL(GramianWeighting):
    """IMTL-G, IMTL-L or both (option ``variant``).

    The log-scales ``s`` [T] (start 0) are learned here by plain SGD on the IMTL-L
    objective, after each backward: ``s_t -= lr (e^{s_t} L_t - 1)`` for present tasks (the
    paper trains them with the model's optimizer); they are saved in :meth:`state_dict`.
    ``l`` alone is a loss weighting (weights ``e^{s_t}``) and computes no gradients per task.
    The base applies the same weights to the task towers, so with ``both`` a tower gets
    ``alpha_t e^{s_t}`` times its gradient (the paper gives it ``e^{s_t}``).
    """

    Options = IMTLOptions
    options: IMTLOptions

    def __init__(self, num_tasks: int, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        self.log_scales = torch.zeros(num_tasks, dtype=torch.float64)
        self._index = torch.arange(num_tasks)
        if self.variant == "l":  # a loss weighting: no Gramian, no shared parameters needed
            self.needs = frozenset({Need.LOSSES})

    @property
    def variant(self) -> Literal["g", "l", "both"]:
        return self.options.variant

    def backward(self, losses: torch.Tensor, context: StepContext) -> torch.Tensor:
        present = context.present.detach().cpu()
        self._index = present.nonzero().flatten()
        if self.variant == "l":
            scales = self.log_scales.exp().to(losses.dtype)
            weights = scales * present * context.static_weights.cpu()
            weights = weights.to(losses.device)
            context.objective(weights, losses).backward()
        else:
            weights = super().backward(losses, context)
        if self.variant != "g":
            self._learn_scales(losses.detach().cpu(), present)
        return weights.detach()

    def _learn_scales(self, losses: torch.Tensor, present: torch.Tensor) -> None:
        """One SGD step on ``sum_t e^{s_t} L_t - s_t``: gradient ``e^{s_t} L_t - 1``."""
        gradient = self.log_scales.exp() * losses.to(torch.float64) - 1.0
        self.log_scales = self.log_scales - self.options.lr * gradient * present

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        if self.variant == "g":
            return like(imtl_g_weights(gramian), gramian)
        scales = self.log_scales[self._index].exp()
        alpha = imtl_g_weights(as_float64(gramian) * torch.outer(scales, scales))
        return like(alpha * scales, gramian)

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        if self.variant == "l":  # no gradients are used: mode and every do not apply
            described = {"method": self.registry_name, "variant": "l", "lr": self.options.lr}
        if self.variant != "g":
            described["log_scales"] = [float(s) for s in self.log_scales]
        return described

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "log_scales": self.log_scales.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        scales = state.get("log_scales")
        if scales is not None:
            if tuple(scales.shape) != (self.num_tasks,):
                raise ValueError(
                    f"imtl state has log_scales of shape {tuple(scales.shape)}, "
                    f"expected ({self.num_tasks},)"
                )
            self.log_scales = scales.detach().to(torch.float64).clone()
