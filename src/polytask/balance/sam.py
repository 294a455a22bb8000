"""Task-based sharpness-aware minimisation: Phan, Tran, Tran, Ho, Phung and Le, "Improving
Multi-task Learning via Seeking Task-based Flat Regions", 2022 (arXiv:2211.13723).

Each task looks for a flat region of its own loss. For every task t present in the batch:

    g_t = grad_shared L_t,            eps_t = rho g_t / ||g_t||
    h_t = grad_own L_t,               e_t   = rho h_t / ||h_t||
    SAM gradient of task t = grad L_t at (shared + eps_t, own + e_t)

where "own" is every non-shared parameter the losses reach (task towers); ``h_t`` is zero
outside task t's own parameters, so only its tower moves, and the shared and task-specific
parts are normalised separately, as in the authors' code. The loss at the perturbed point comes
from ``context.recompute_losses()`` (a second forward pass on the same batch, one per task);
the parameters are then restored exactly from a copy.

Aggregation: the shared parameters get the equally weighted (static weights only) sum of the
per-task SAM gradients, ``sum_t w_t grad_shared L_t(perturbed_t)``; the paper combines them
with a gradient-balancing method (e.g. MGDA, PCGrad), which is not done here. The towers get
the SAM gradient of their own task. The auxiliary loss is added at the unperturbed point.

Caveats: a recomputed forward pass draws new dropout masks and updates batch-norm running
statistics (the authors freeze those in the second pass).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from polytask.balance.base import BALANCERS, Balancer, Need, StepContext
from polytask.balance.db_mtl import non_shared_leaves
from polytask.balance.jacobian import task_gradients
from polytask.balance.options import TaskSAMOptions

EPS = 1e-12


def perturbation(blocks: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """``rho g / ||g||`` for one gradient given as blocks; zeros where g = 0."""
    norm = math.sqrt(sum(float((block.double() ** 2).sum()) for block in blocks))
    scale = rho / (norm + EPS) if norm > 0 else 0.0
    return [block * scale for block in blocks]


@BALANCERS.register("sam_task")
class TaskSAM(Balancer):
    """A SAM step per task (option ``rho``: the perturbation's radius), summed.

    Returns the static weights of the present tasks [T].
    """

    needs = frozenset({Need.SHARED_GRADS})
    Options = TaskSAMOptions
    options: TaskSAMOptions

    def backward(self, losses: torch.Tensor, context: StepContext) -> torch.Tensor:
        if context.recompute_losses is None:
            raise ValueError("sam_task needs context.recompute_losses to evaluate perturbed losses")
        weights = (context.static_weights * context.present).to(losses.dtype)
        shared = [p for p in context.shared_params if p.requires_grad]
        own = non_shared_leaves(losses, shared)
        shared_grads = context.gradients(losses, "parameters") if shared else []
        own_grads = task_gradients(losses, own) if own else []
        if context.extra_loss is not None and context.extra_loss.requires_grad:
            context.extra_loss.backward()
        params = [*shared, *own]
        for t in context.present.nonzero().flatten().tolist():
            shift = [
                *perturbation([g[t] for g in shared_grads], self.options.rho),
                *perturbation([h[t] for h in own_grads], self.options.rho),
            ]
            self._perturbed_backward(params, shift, t, weights[t], context)
        return weights.detach()

    @staticmethod
    def _perturbed_backward(
        params: list[torch.Tensor],
        shift: list[torch.Tensor],
        task: int,
        weight: torch.Tensor,
        context: StepContext,
    ) -> None:
        """Accumulate ``w_t grad L_t(params + shift)`` and put the parameters back."""
        assert context.recompute_losses is not None
        saved = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                for param, delta in zip(params, shift, strict=True):
                    param.add_(delta.to(param.dtype))
            perturbed = context.recompute_losses()
            (weight * perturbed[task]).backward()
        finally:
            with torch.no_grad():
                for param, value in zip(params, saved, strict=True):
                    param.copy_(value)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "aggregation": "equal",
            "gradients": "parameters",
        }
