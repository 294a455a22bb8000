"""Uncertainty weighting (UW): Kendall, Gal and Cipolla, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018.

Each task t has a learned log-variance ``s_t = log sigma_t^2`` and the objective is

    sum_t  exp(-s_t) L_t + s_t

for every task kind. The paper derives ``1/(2 sigma^2) L + log sigma`` for regression and
``1/sigma^2 L + log sigma`` for classification; the single form above (used by the authors'
later code and by most libraries) differs from those only by constant factors, which keeps one
rule for binary, multiclass, regression and multilabel tasks alike. For a constant loss L_t its
minimiser over s_t is ``s_t = log L_t``: tasks with a large loss get a small weight
``exp(-s_t) = 1 / L_t``, and the ``+ s_t`` term stops all weights from collapsing to 0.
"""

from __future__ import annotations

from typing import Any

import torch

from polytask.balance.base import BALANCERS, Balancer, StepContext
from polytask.balance.options import UncertaintyOptions


@BALANCERS.register("uw")
class UncertaintyWeighting(Balancer):
    """Learned log-variances, one scalar ``nn.Parameter`` per task.

    The log-variances are separate scalar parameters so that a task absent from a batch has no
    gradient (``.grad`` stays ``None``) and the optimizer leaves its log-variance and its
    moment estimates untouched that step. They are optimised by the trainer's optimizer (see
    :meth:`Balancer.parameters`), without weight decay, which would pull them to 0.
    """

    Options = UncertaintyOptions
    options: UncertaintyOptions

    def __init__(self, num_tasks: int, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        init = self.options.init
        self.log_vars = [torch.nn.Parameter(torch.tensor(init)) for _ in range(num_tasks)]

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.log_vars)

    def backward(self, losses: torch.Tensor, context: StepContext) -> torch.Tensor:
        """``sum_{t present} w_t (exp(-s_t) L_t + s_t)`` + auxiliary loss; returns the
        effective loss weights ``w_t exp(-s_t)`` [T] (0 for absent tasks).

        ``w_t`` is the config's static weight; it scales the regulariser too, so the optimum
        stays at ``s_t = log L_t``.
        """
        weights = torch.zeros(self.num_tasks, dtype=losses.dtype, device=losses.device)
        total = losses.new_zeros(())
        for t in context.present.nonzero().flatten().tolist():
            s = self.log_vars[t]
            static = context.static_weights[t].to(losses.dtype)
            total = total + static * (torch.exp(-s) * losses[t] + s)
            weights[t] = static * torch.exp(-s.detach())
        if context.extra_loss is not None:
            total = total + context.extra_loss
        if total.requires_grad:
            total.backward()
        return weights

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "log_variances": [float(s.detach()) for s in self.log_vars],
        }

    def state_dict(self) -> dict[str, Any]:
        return {"log_vars": torch.stack([s.detach().clone() for s in self.log_vars])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copies in place: the optimizer keeps referring to the same parameter objects."""
        values = state["log_vars"]
        if values.shape != (self.num_tasks,):
            raise ValueError(f"expected {self.num_tasks} log-variances, got {tuple(values.shape)}")
        with torch.no_grad():
            for s, value in zip(self.log_vars, values, strict=True):
                s.copy_(value)
