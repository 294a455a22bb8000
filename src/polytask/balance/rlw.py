"""Random loss weighting (RLW): Lin, Ye, Xu, Shi and Zhang, "Reasonable Effectiveness of Random
Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022.

Every step draws fresh weights from a distribution on the simplex and minimises
``sum_t lambda_t L_t``; the paper shows this simple baseline is competitive with learned
weightings and escapes bad local minima through its randomness. Two of the paper's samplers:

- ``normal``: ``lambda = softmax(z)`` with ``z ~ N(0, I)`` (the paper's default);
- ``dirichlet``: ``lambda ~ Dirichlet(1, ..., 1)``, drawn as normalised Exp(1) variables.

As in the paper the weights sum to 1 (not to T), over the tasks present in the batch. The
draws come from the balancer's own ``torch.Generator`` seeded by the ``seed`` option, so a
run is reproducible and independent of the model's random stream; the generator advances by T
draws per step whatever the batch holds, and its state is checkpointed.
"""

from __future__ import annotations

from typing import Any

import torch

from polytask.balance.base import BALANCERS, Balancer, StepContext
from polytask.balance.options import RLWOptions


def sample_weights(
    num_tasks: int, distribution: str, generator: torch.Generator, present: torch.Tensor
) -> torch.Tensor:
    """One draw of weights [T] on the simplex of the present tasks (0 for absent ones)."""
    if distribution == "normal":
        raw = torch.randn(num_tasks, generator=generator, dtype=torch.float64)
        raw = raw.masked_fill(~present, -torch.inf)
        if not bool(present.any()):
            return torch.zeros(num_tasks, dtype=torch.float64)
        return torch.softmax(raw, dim=0)
    uniform = torch.rand(num_tasks, generator=generator, dtype=torch.float64)
    exponential = -torch.log1p(-uniform) * present  # Exp(1); normalised: Dirichlet(1, ..., 1)
    total = exponential.sum()
    return exponential / total if bool(total > 0) else exponential


@BALANCERS.register("rlw")
class RandomLossWeighting(Balancer):
    """Fresh weights on the simplex of the present tasks every step."""

    Options = RLWOptions
    options: RLWOptions

    def __init__(self, num_tasks: int, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        self.generator = torch.Generator().manual_seed(self.options.seed)

    def backward(self, losses: torch.Tensor, context: StepContext) -> torch.Tensor:
        present = context.present.bool().cpu()
        drawn = sample_weights(self.num_tasks, self.options.distribution, self.generator, present)
        weights = drawn.to(losses.dtype) * context.static_weights * context.present
        context.objective(weights, losses).backward()
        return weights.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
