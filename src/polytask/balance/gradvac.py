"""Gradient Vaccine: steer every pair of task gradients towards a target cosine similarity.

Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021 (Algorithm 1). PCGrad only repairs
negative cosines (target 0); GradVac keeps, for every ordered pair (i, j), an exponential
moving average target ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij`` of the observed
cosine, and whenever ``phi_ij = cos(g_i', g_j) < phi_hat_ij`` adds the multiple of ``g_j``
that brings the cosine exactly to the target (eq. 2):

    g_i' += |g_i'| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
            / (|g_j| sqrt(1 - phi_hat^2)) g_j

As in PCGrad, ``g_i'`` is tracked as a coefficient row over the original gradients with inner
products from the Gramian, and the update is ``sum_i g_i'``.
"""

from __future__ import annotations

from typing import Any

import torch

from polytask.balance._linalg import as_float64, like
from polytask.balance.base import BALANCERS, GramianWeighting, StepContext
from polytask.balance.options import GradVacOptions
from polytask.balance.pcgrad import task_orders, visit_stages

# Targets are kept below 1 so that sqrt(1 - phi_hat^2) in eq. 2 never divides by zero.
MAX_TARGET = 1.0 - 1e-6


def gradvac_coefficients(
    gramian: torch.Tensor, orders: list[torch.Tensor], targets: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One GradVac step. gramian: [P, P]; orders: P permutations; targets: [P, P] EMA
    cosines (row i: targets of task i against each j). Returns the coefficient rows
    ``C`` [P, P] (``g_i' = sum_j C_ij g_j``) and the updated targets [P, P] (float64).
    Pairs where either gradient is zero are skipped (their cosine is undefined).

    As in :func:`~polytask.balance.pcgrad.pcgrad_coefficients`, row i (and target row i)
    only depends on itself, so all rows take their k-th pair at once: P vectorised stages
    instead of P^2 scalar steps (about 48 ms of Python per step at P = 40).
    """
    matrix = as_float64(gramian)
    targets = targets.detach().to(torch.float64).clone()
    size = matrix.shape[0]
    coefficients = torch.eye(size, dtype=torch.float64)
    if not orders:
        return coefficients, targets
    norms = torch.diagonal(matrix).clamp(min=0.0).sqrt()
    rows, visits = visit_stages(orders)
    for stage in range(visits.shape[1]):
        others = visits[:, stage]  # the task each row meets now
        current = coefficients[rows]
        norm_i = ((current @ matrix) * current).sum(dim=1).clamp(min=0.0).sqrt()
        norm_j = norms[others]
        pair = (others != rows) & (norm_i > 0) & (norm_j > 0)
        safe = torch.where(pair, norm_i * norm_j, 1.0)
        inner = (current * matrix[:, others].T).sum(dim=1)  # <g_i', g_j>
        phi = (inner / safe).clamp(-1.0, 1.0)
        old = targets[rows, others]
        target = old.clamp(max=MAX_TARGET)
        lift = pair & (phi < target)
        root_target = (1.0 - target**2).sqrt()
        gain = target * (1.0 - phi**2).sqrt() - phi * root_target
        denominator = torch.where(lift, norm_j * root_target, 1.0)
        coefficients[rows, others] += torch.where(lift, norm_i * gain / denominator, 0.0)
        targets[rows, others] = torch.where(pair, (1.0 - beta) * old + beta * phi, old)
    return coefficients, targets


@BALANCERS.register("gradvac")
class GradVac(GramianWeighting):
    """Options ``beta`` (the EMA rate; 0.01, the paper's value) and ``seed`` (the random
    orders, as in PCGrad).

    The EMA targets [T, T] start at 0 (so GradVac starts as PCGrad) and are saved in
    :meth:`state_dict`; only pairs of tasks present in the batch are updated.
    """

    Options = GradVacOptions
    options: GradVacOptions

    def __init__(self, num_tasks: int, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        self.targets = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)
        self._step = 0
        self._index = torch.arange(num_tasks)

    def backward(self, losses: torch.Tensor, context: StepContext) -> torch.Tensor:
        # the EMA rows belong to global task ids and the orders to the step: keep both
        self._step = context.step
        self._index = context.present.detach().cpu().nonzero().flatten()
        return super().backward(losses, context)

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        index = self._index
        orders = task_orders(gramian.shape[0], self._step, self.options.seed)
        sub_targets = self.targets[index][:, index]
        coefficients, updated = gradvac_coefficients(
            gramian, orders, sub_targets, self.options.beta
        )
        self.targets[index.unsqueeze(1), index.unsqueeze(0)] = updated
        return like(coefficients.sum(dim=0), gramian)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "targets": self.targets.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        targets = state.get("targets")
        if targets is not None:
            if tuple(targets.shape) != (self.num_tasks, self.num_tasks):
                raise ValueError(
                    f"gradvac state has targets of shape {tuple(targets.shape)}, "
                    f"expected ({self.num_tasks}, {self.num_tasks})"
                )
            self.targets = targets.detach().to(torch.float64).clone()
