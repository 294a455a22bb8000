"""DB-MTL: Lin, Jiang, Ye, Zhang, Zhang, Zhang and Kwok, "Dual-Balancing Multi-Task Learning",
2023 (arXiv:2308.12029).

Two balancing steps:

1. Loss scale: every loss is log-transformed, so a task's gradient becomes
   ``grad log L_t = grad L_t / L_t`` and no task dominates by the unit of its loss.
2. Gradient magnitude, on the shared parameters: an exponential moving average of each task's
   log-loss gradient,

       ghat_t <- g_t + beta_k (ghat_t - g_t),      beta_k = beta / k^beta_sigma,

   (k: the task's step count; ghat starts at 0; beta 0.9, beta_sigma 0.5 as in the paper's
   experiments) and then every task's EMA is rescaled to the largest norm:

       d = sum_t (max_s ||ghat_s|| / ||ghat_t||) ghat_t.

   The EMA is of the gradients themselves, as in the paper and in the authors' LibMTL code
   (the norms are those of the averaged gradients), not an average of norms.

``d`` is written into ``.grad`` of the shared parameters directly (exact per-task gradients on
every shared parameter, see :meth:`StepContext.gradients`); the other parameters (towers) get
the ordinary gradient of ``sum_t log L_t``, from a backward pass restricted to them. The
architecture's auxiliary loss is added unweighted on every parameter. Static task weights scale
each task's term in both parts. A task absent from the batch is left out of both parts and its
EMA and step count are not updated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from polytask.balance.base import BALANCERS, Balancer, Need, StepContext
from polytask.balance.jacobian import combine
from polytask.balance.options import DBMTLOptions

EPS = 1e-8


def graph_leaves(output: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors requiring grad that ``output`` depends on: the variables of the
    ``AccumulateGrad`` nodes of its autograd graph, in a deterministic discovery order."""
    if output.grad_fn is None:
        return [output] if output.requires_grad else []
    leaves: list[torch.Tensor] = []
    seen_nodes: set[int] = set()
    seen_leaves: set[int] = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor) and id(variable) not in seen_leaves:
            seen_leaves.add(id(variable))
            leaves.append(variable)
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return leaves


def non_shared_leaves(losses: torch.Tensor, shared: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters ``losses`` reach other than ``shared``: task towers and the like."""
    shared_ids = {id(p) for p in shared}
    return [leaf for leaf in graph_leaves(losses) if id(leaf) not in shared_ids]


def rescale_to_max_norm(averages: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """``alpha_t = max_s ||ghat_s|| / ||ghat_t||`` [K] over the tasks ``index`` [K]; the norm
    of a task is over all blocks ``averages`` (each [T, *shape])."""
    squared = sum(block[index].flatten(1).pow(2).sum(dim=1) for block in averages)
    norms = torch.as_tensor(squared).sqrt()
    return norms.max() / (norms + EPS)


@BALANCERS.register("db_mtl")
class DBMTL(Balancer):
    """Log losses, averaged gradients rescaled to the largest norm.

    Returns ``w_t alpha_t`` [T]: the static weight times the factor on the task's averaged
    log-loss gradient (not a weight on the raw loss).
    """

    needs = frozenset({Need.SHARED_GRADS})
    Options = DBMTLOptions
    options: DBMTLOptions

    def __init__(self, num_tasks: int, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        self.steps = torch.zeros(num_tasks, dtype=torch.long)
        self.averages: list[torch.Tensor] | None = None  # per shared tensor: [T, *shape]

    def backward(self, losses: torch.Tensor, context: StepContext) -> torch.Tensor:
        present = context.present.bool()
        index = present.nonzero().flatten()
        shared = [p for p in context.shared_params if p.requires_grad]
        weights = torch.zeros(self.num_tasks, dtype=losses.dtype, device=losses.device)
        if index.numel() and shared:
            self._update_averages(losses, context, index)
            assert self.averages is not None
            alpha = rescale_to_max_norm(self.averages, index).to(losses.dtype)
            weights[index] = alpha * context.static_weights[index].to(losses.dtype)
        self._backward_task_specific(losses, context, index, shared)
        if index.numel() and shared:
            assert self.averages is not None
            for param, grad in zip(shared, combine(weights, self.averages), strict=True):
                param.grad = grad if param.grad is None else param.grad + grad
        return weights.detach()

    def _update_averages(
        self, losses: torch.Tensor, context: StepContext, index: torch.Tensor
    ) -> None:
        """EMA of ``grad log L_t`` on the shared parameters, for the present tasks."""
        grads = context.gradients(losses, "parameters")
        if self.averages is None:
            self.averages = [torch.zeros_like(block) for block in grads]
        inverse = 1.0 / (losses.detach() + EPS)  # grad log(L + eps) = grad L / (L + eps)
        self.steps[index.cpu()] += 1
        beta, sigma = self.options.beta, self.options.beta_sigma
        rates = beta / self.steps.to(torch.float64) ** sigma  # [T]
        for average, block in zip(self.averages, grads, strict=True):
            log_grad = block[index] * inverse[index].view(-1, *[1] * (block.dim() - 1))
            rate = rates[index.cpu()].to(block.dtype).to(block.device)
            rate = rate.view(-1, *[1] * (block.dim() - 1))
            average[index] = log_grad + rate * (average[index] - log_grad)

    def _backward_task_specific(
        self,
        losses: torch.Tensor,
        context: StepContext,
        index: torch.Tensor,
        shared: list[torch.nn.Parameter],
    ) -> None:
        """``sum_t w_t log L_t`` into the non-shared parameters only; the auxiliary loss into
        every parameter."""
        extra = context.extra_loss
        if index.numel():
            own = non_shared_leaves(losses, shared)
            static = context.static_weights[index].to(losses.dtype)
            total = (static * torch.log(losses[index] + EPS)).sum()
            if own and total.requires_grad:
                torch.autograd.backward(total, inputs=own, retain_graph=extra is not None)
        if extra is not None and extra.requires_grad:
            extra.backward()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gradients": "parameters"}

    def state_dict(self) -> dict[str, Any]:
        averages = None if self.averages is None else [a.clone() for a in self.averages]
        return {"steps": self.steps.clone(), "averages": averages}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"].clone()
        averages = state["averages"]
        self.averages = None if averages is None else [a.clone() for a in averages]
