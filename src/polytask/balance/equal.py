"""Equal weighting (EW): the sum of per-task losses, scaled by the config's static weights."""

from __future__ import annotations

import torch

from polytask.balance.base import BALANCERS, Balancer, StepContext
from polytask.balance.options import EqualOptions


@BALANCERS.register("equal")
class EqualWeighting(Balancer):
    """Weights are the static task weights, zeroed for tasks absent from the batch."""

    Options = EqualOptions

    def backward(self, losses: torch.Tensor, context: StepContext) -> torch.Tensor:
        weights = context.static_weights * context.present
        context.objective(weights, losses).backward()
        return weights.detach()
