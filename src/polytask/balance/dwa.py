"""Dynamic Weight Average (DWA): Liu, Johns and Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019.

A task whose loss fell slowly over the last epoch gets more weight in the next one:

    r_t = L_t(e-1) / L_t(e-2),      w_t = K exp(r_t / temperature) / sum_s exp(r_s / temperature)

where ``L_t(e)`` is task t's mean training loss over epoch e and K is the number of tasks. The
paper uses K = T and ``w_t = 1`` for the first two epochs. Here K is the number of tasks present
in the batch (= T when every task has labels), so that absent tasks take no share; a task with
fewer than two epochs of history gets ``r_t = 1``, which reproduces the paper's ``w_t = 1``
while no task has history.

The epoch means are accumulated from the losses each step sees (tasks present only) and closed
by :meth:`end_epoch`, which the trainer calls at the end of every training epoch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from polytask.balance.base import BALANCERS, Balancer, StepContext
from polytask.balance.options import DWAOptions


def dwa_weights(ratios: torch.Tensor, temperature: float) -> torch.Tensor:
    """``K softmax(r / temperature)`` for loss ratios r [K] -> weights [K], summing to K."""
    return ratios.numel() * torch.softmax(ratios / temperature, dim=0)


@BALANCERS.register("dwa")
class DynamicWeightAverage(Balancer):
    """Loss-ratio weights, recomputed from the last two epochs' mean losses."""

    Options = DWAOptions
    options: DWAOptions

    def __init__(self, num_tasks: int, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        # running sums of the current epoch, and the last two epoch means (NaN: unknown)
        self.loss_sum = torch.zeros(num_tasks, dtype=torch.float64)
        self.loss_count = torch.zeros(num_tasks, dtype=torch.float64)
        self.last = torch.full((num_tasks,), math.nan, dtype=torch.float64)  # L(e-1)
        self.before_last = torch.full((num_tasks,), math.nan, dtype=torch.float64)  # L(e-2)

    def ratios(self) -> torch.Tensor:
        """``r_t = L_t(e-1) / L_t(e-2)`` [T], 1 where a task lacks two epochs of history."""
        known = torch.isfinite(self.last) & torch.isfinite(self.before_last)
        known &= self.before_last > 0
        ratio = self.last / torch.where(known, self.before_last, torch.ones_like(self.last))
        return torch.where(known, ratio, torch.ones_like(ratio))

    def backward(self, losses: torch.Tensor, context: StepContext) -> torch.Tensor:
        present = context.present
        index = present.nonzero().flatten()
        weights = torch.zeros(self.num_tasks, dtype=torch.float64)
        if index.numel():
            weights[index] = dwa_weights(self.ratios()[index], self.options.temperature)
        weights = weights.to(losses.dtype) * context.static_weights * present
        context.objective(weights, losses).backward()
        detached = losses.detach().to(torch.float64)
        self.loss_sum[index] += detached[index]
        self.loss_count[index] += 1
        return weights.detach()

    def end_epoch(self) -> None:
        """Close the epoch: its mean loss becomes ``L(e-1)`` for the tasks seen in it (a task
        without a label all epoch keeps its history)."""
        seen = self.loss_count > 0
        mean = self.loss_sum / self.loss_count.clamp(min=1)
        self.before_last = torch.where(seen, self.last, self.before_last)
        self.last = torch.where(seen, mean, self.last)
        self.loss_sum.zero_()
        self.loss_count.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss_sum": self.loss_sum.clone(),
            "loss_count": self.loss_count.clone(),
            "last": self.last.clone(),
            "before_last": self.before_last.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("loss_sum", "loss_count", "last", "before_last"):
            setattr(self, key, state[key].clone().to(torch.float64))
