"""FAMO: Liu, Liang, Stone and Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.

FAMO decreases all task losses at an equal *rate* with O(1) cost per step (no per-task
gradients). Task weights are ``z = softmax(xi)`` over learnable logits xi, and the update
direction is

    d = sum_t c_t grad log L_t,      c_t = z_t / sum_s (z_s / L_s)

i.e. the gradient of ``sum_t c_t log L_t`` with c held constant (the paper's Eq. 6; in the
authors' code ``(z / c).T log L`` with ``c = sum(z / L)`` detached). After the step, xi moves to
favour the tasks whose log-loss fell least:

    delta = J_z(xi)^T (log L_before - log L_after),      xi <- Adam(xi, grad = delta + gamma xi)

with J_z the softmax Jacobian ``diag(z) - z z^T``; as in the authors' code the logit update is
Adam with lr 0.025 and (L2) weight decay gamma = 1e-3, and ``log L`` is ``log(L + 1e-8)``
(their ``min_losses`` = 0).

Deviation: the authors recompute the losses on the same batch after the optimizer step to get
``L_after``. A balancer cannot see the model after the step, so here ``L_after`` is the losses
of the *next* call (the next batch): no extra forward pass, at the price of batch-to-batch noise
in delta. The logit update of call k therefore uses the losses of calls k-1 and k and happens
before the weights of call k are computed. Only tasks present in both calls take part in it
(softmax restricted to them); absent tasks keep their logit and Adam moments.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from polytask.balance.base import BALANCERS, Balancer, StepContext
from polytask.balance.options import FAMOOptions

EPS = 1e-8
BETAS = (0.9, 0.999)


def masked_adam_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    state: dict[str, torch.Tensor],
    mask: torch.Tensor,
    lr: float,
    weight_decay: float,
) -> None:
    """One ``torch.optim.Adam`` step (L2 weight decay, default betas and eps) on the entries of
    the vector ``param`` [T] where ``mask`` [T] holds, in place; other entries, their moments
    and step counts stay as they are (a task absent from the batch is not updated).

    ``state``: ``exp_avg``, ``exp_avg_sq`` [T] and ``steps`` [T] (per entry).
    """
    beta1, beta2 = BETAS
    grad = grad + weight_decay * param
    exp_avg = beta1 * state["exp_avg"] + (1 - beta1) * grad
    exp_avg_sq = beta2 * state["exp_avg_sq"] + (1 - beta2) * grad * grad
    steps = state["steps"] + 1
    correction1 = 1 - beta1 ** steps.to(param.dtype)
    correction2 = 1 - beta2 ** steps.to(param.dtype)
    denom = exp_avg_sq.sqrt() / correction2.sqrt() + EPS
    updated = param - lr / correction1 * exp_avg / denom
    param.copy_(torch.where(mask, updated, param))
    state["exp_avg"] = torch.where(mask, exp_avg, state["exp_avg"])
    state["exp_avg_sq"] = torch.where(mask, exp_avg_sq, state["exp_avg_sq"])
    state["steps"] = torch.where(mask, steps, state["steps"])


def new_adam_state(num_tasks: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {
        "exp_avg": torch.zeros(num_tasks, dtype=dtype),
        "exp_avg_sq": torch.zeros(num_tasks, dtype=dtype),
        "steps": torch.zeros(num_tasks, dtype=torch.long),
    }


def softmax_vjp(logits: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``J_z(xi)^T v`` for ``z = softmax(xi)``: ``z * (v - <z, v>)`` [K]."""
    z = torch.softmax(logits, dim=0)
    return z * (vector - (z * vector).sum())


def famo_coefficients(z: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """``c_t = z_t / sum_s(z_s / L_s)`` [K]: the weights on ``grad log L_t`` (z, losses: [K])."""
    return z / (z / (losses + EPS)).sum()


@BALANCERS.register("famo")
class FAMO(Balancer):
    """Weight logits learned by their own Adam (the authors' ``lr`` and ``weight_decay``).

    Returns the effective weights on the raw losses, ``w_t c_t / L_t`` [T] (w: static weights).
    """

    Options = FAMOOptions
    options: FAMOOptions

    def __init__(self, num_tasks: int, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        self.logits = torch.zeros(num_tasks)
        self.adam = new_adam_state(num_tasks)
        self.prev_log_losses = torch.full((num_tasks,), math.nan)  # NaN: absent last call

    def update_logits(self, log_losses: torch.Tensor, present: torch.Tensor) -> None:
        """xi update from the decrease ``log L_before - log L_after`` [T] of the tasks present
        in the previous call and in this one."""
        both = present & torch.isfinite(self.prev_log_losses)
        if not bool(both.any()):
            return
        index = both.nonzero().flatten()
        decrease = self.prev_log_losses[index] - log_losses[index]
        grad = torch.zeros(self.num_tasks)
        grad[index] = softmax_vjp(self.logits[index], decrease)
        lr, decay = self.options.lr, self.options.weight_decay
        masked_adam_step(self.logits, grad, self.adam, both, lr, decay)

    def backward(self, losses: torch.Tensor, context: StepContext) -> torch.Tensor:
        present = context.present.bool().cpu()
        index = present.nonzero().flatten()
        log_losses = torch.full((self.num_tasks,), math.nan)
        log_losses[index] = torch.log(losses.detach().float().cpu()[index] + EPS)
        self.update_logits(log_losses, present)
        self.prev_log_losses = log_losses

        coefficients = torch.zeros(self.num_tasks, dtype=losses.dtype)
        if index.numel():
            z = torch.softmax(self.logits[index], dim=0)
            coefficients[index] = famo_coefficients(z, losses.detach()[index].cpu()).to(
                losses.dtype
            )
        coefficients = coefficients.to(losses.device) * context.static_weights
        total = losses.new_zeros(())
        for t in index.tolist():
            total = total + coefficients[t] * torch.log(losses[t] + EPS)
        if context.extra_loss is not None:
            total = total + context.extra_loss
        if total.requires_grad:
            total.backward()
        safe = torch.where(present.to(losses.device), losses.detach(), torch.ones_like(losses))
        return (coefficients / (safe + EPS)).detach()

    def state_dict(self) -> dict[str, Any]:
        return {
            "logits": self.logits.clone(),
            "adam": {key: value.clone() for key, value in self.adam.items()},
            "prev_log_losses": self.prev_log_losses.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.logits = state["logits"].clone()
        self.adam = {key: value.clone() for key, value in state["adam"].items()}
        self.prev_log_losses = state["prev_log_losses"].clone()
