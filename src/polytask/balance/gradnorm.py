"""GradNorm: Chen, Badrinarayanan, Lee and Rabinovich, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018.

GradNorm learns loss weights w_t so that every task's weighted gradient norm tracks a common
target that grows with how far behind the task is:

    G_t = || grad_W (w_t L_t) || = w_t ||g_t||,           G_bar = mean_t G_t
    Ltilde_t = L_t / L_t(0),   r_t = Ltilde_t / mean_s Ltilde_s   (relative inverse rate)
    L_grad = sum_t | G_t - G_bar r_t^alpha |                    (target held constant)

and the weights descend ``grad_w L_grad = sign(G_t - target_t) ||g_t||``, then are renormalised
so that they sum to T. The network itself gets the ordinary gradient of ``sum_t w_t L_t`` with
the weights before this step's update (the paper's Algorithm 1).

Choices here:

- W is the shared representation (the encoder output), not the last shared layer's weights:
  ``g_t = dL_t/d representation``, the cheap variant the paper's Section 3.2 allows and
  LibMTL's ``rep_grad`` mode uses. The norms are read as the square roots of the diagonal of
  that gradient's Gramian (``context.gramian(losses, "representation")``): the same numbers,
  and under several processes the ranks' Gramians over their disjoint rows sum to the global
  batch's, so GradNorm runs data-parallel and learns the weights one process would.
- The weights have their own Adam (option ``lr``, default 0.025) rather than the model's
  optimizer, so they need no schedule or weight decay from it; Adam is per task and masked,
  so a task absent from the batch keeps its weight, moments and reference loss.
- ``L_t(0)`` is the task's loss the first time it is seen in a batch.
- Renormalisation rescales only the present tasks' weights, to the sum they had before the
  update, so the total stays T and absent tasks are untouched. Weights are kept >= 1e-4.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from polytask.balance.base import BALANCERS, Balancer, Need, StepContext
from polytask.balance.famo import masked_adam_step, new_adam_state
from polytask.balance.options import GradNormOptions

MIN_WEIGHT = 1e-4


def gradnorm_weight_gradient(
    weights: torch.Tensor, grad_norms: torch.Tensor, relative_losses: torch.Tensor, alpha: float
) -> torch.Tensor:
    """``d L_grad / d w`` [K] for weights, gradient norms ``||g_t||`` and ``L_t / L_t(0)`` [K].

    ``L_grad = sum_t |w_t ||g_t|| - G_bar r_t^alpha|`` with ``G_bar r_t^alpha`` constant.
    """
    norms = weights * grad_norms
    rates = relative_losses / relative_losses.mean()
    target = norms.mean() * rates**alpha
    return torch.sign(norms - target) * grad_norms


@BALANCERS.register("gradnorm")
class GradNorm(Balancer):
    """Learned weights (start 1), one GradNorm step per training step.

    Returns the weights used for the network's gradient, times the static weights [T].
    """

    needs = frozenset({Need.REPRESENTATION_GRADS})
    sums_over_rows = True
    Options = GradNormOptions
    options: GradNormOptions

    def __init__(self, num_tasks: int, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        self.weights = torch.ones(num_tasks)
        self.adam = new_adam_state(num_tasks)
        self.initial_losses = torch.full((num_tasks,), math.nan)

    def backward(self, losses: torch.Tensor, context: StepContext) -> torch.Tensor:
        present = context.present.bool().cpu()
        used = (self.weights.to(losses.dtype) * present).to(losses.device)
        used = used * context.static_weights
        if bool(present.any()):
            self.update_weights(losses, context, present)
        context.objective(used, losses).backward()
        return used.detach()

    def update_weights(
        self, losses: torch.Tensor, context: StepContext, present: torch.Tensor
    ) -> None:
        """One GradNorm step on the weights of the present tasks (before the network's
        backward, which frees the graph the representation gradients need)."""
        detached = losses.detach().float().cpu()
        first = present & torch.isnan(self.initial_losses)
        self.initial_losses[first] = detached[first]
        index = present.nonzero().flatten()
        gramian = context.gramian(losses, "representation").detach()
        grad_norms = gramian.diagonal().clamp(min=0).sqrt().float().cpu()[index]
        relative = detached[index] / self.initial_losses[index].clamp(min=1e-12)
        gradient = torch.zeros(self.num_tasks)
        gradient[index] = gradnorm_weight_gradient(
            self.weights[index], grad_norms, relative, self.options.alpha
        )
        before = self.weights[index].sum()
        masked_adam_step(self.weights, gradient, self.adam, present, self.options.lr, 0.0)
        self.weights.clamp_(min=MIN_WEIGHT)
        self.weights[index] *= before / self.weights[index].sum()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "gradients": "representation",
            "weights": self.weights.tolist(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.clone(),
            "adam": {key: value.clone() for key, value in self.adam.items()},
            "initial_losses": self.initial_losses.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"].clone()
        self.adam = {key: value.clone() for key, value in state["adam"].items()}
        self.initial_losses = state["initial_losses"].clone()
