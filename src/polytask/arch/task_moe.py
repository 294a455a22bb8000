"""Task-level sparse mixture of experts: each task routes to its top-k of E shared experts.

Routing (option ``routing``):

- ``"task"`` (default): the router is a learned [T, E] logit table, so the route depends on
  the task only. In eval every row of task t uses the same k experts and the task's
  sub-network is exactly those experts (:meth:`TaskMoE.task_experts` names them), which is
  what lets a slim per-task model be cut out later. During training Gaussian noise is added
  per (row, task) before the top-k (noisy top-k, Shazeer et al. 2017), so that selection can
  move and unselected experts' logits get a learning signal.
- ``"row"``: one linear router per task on the input, top-k per (row, task), as in a classic
  sparse MoE layer with task-specific gates (Mod-Squad, Chen et al. CVPR 2023).

Two auxiliary terms (``auxiliary_loss``, training only) make each task use a small,
identifiable subset while the whole pool stays in use:

- load balancing (Switch Transformer): ``E * sum_e f_e * P_e``, f_e the fraction of routed
  (row, task) assignments sent to expert e, P_e the mean router probability of expert e;
- task-expert mutual information (Mod-Squad): ``-I(task; expert)`` with
  ``I = H(E) - H(E|T)``, P(e|t) the mean router probability of task t, P(t) uniform.

Experts are an :class:`~polytask.nn.experts.ExpertBank` (weights [E, in, out] per layer, so
experts can be sliced out), computed sparsely with the ops of :mod:`polytask.nn.dispatch`:
no expert runs on a row that was not routed to it.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from polytask.arch.base import ARCHS, ArchOptions, SharingArch
from polytask.config import ModelSpec
from polytask.errors import ConfigError
from polytask.nn.dispatch import (
    gather_rows,
    grouped_addmm,
    merge_duplicates,
    segment_sizes,
    sort_by_expert,
    weighted_scatter_add,
)
from polytask.nn.experts import ExpertBank

TASK_LOGIT_INIT_STD = 0.1
"""Spread of the initial task logit table: small against the routing noise, so early routes
explore, but non-zero, so tasks start apart even with ``noise: 0`` (a constant table would
give every task the same experts, where the MI term has zero gradient)."""

PROBABILITY_FLOOR = 1e-12  # keeps p * log p finite (and its gradient) if a softmax underflows


class TaskMoEOptions(ArchOptions):
    top_k: int = Field(2, ge=1, description="experts each task (or each row of a task) uses")
    routing: Literal["task", "row"] = Field(
        "task", description="'task': route on the task only; 'row': route each row"
    )
    noise: float = Field(
        1.0, ge=0.0, description="std of the Gaussian noise on router logits in training"
    )
    balance_weight: float = Field(0.01, ge=0.0, description="weight of the load-balancing loss")
    mi_weight: float = Field(
        0.01, ge=0.0, description="weight of the task-expert mutual information (maximised)"
    )


@ARCHS.register("task_moe")
class TaskMoE(SharingArch):
    """E shared experts; task t reads the routing-weighted sum of its top-k experts.

    ``last_gate_weights`` [T, B, E] holds the renormalised routing weights of the last forward
    pass (detached, zero for unselected experts, each row summing to 1).

    Shapes: x [B, in_dim] -> [T, B, hidden[-1]].
    """

    Options = TaskMoEOptions
    options: TaskMoEOptions

    def __init__(self, in_dim: int, num_tasks: int, spec: ModelSpec) -> None:
        super().__init__(in_dim, num_tasks, spec)
        self.num_experts = spec.num_experts
        self.experts = ExpertBank(spec.num_experts, in_dim, spec.hidden, dropout=spec.dropout)
        self.task_logits: nn.Parameter | None = None
        self.router: nn.Linear | None = None
        if self.options.routing == "task":
            self.task_logits = nn.Parameter(torch.empty(num_tasks, spec.num_experts))
            nn.init.normal_(self.task_logits, std=TASK_LOGIT_INIT_STD)
        else:
            self.router = nn.Linear(in_dim, num_tasks * spec.num_experts)
        self.last_gate_weights: torch.Tensor | None = None

    @classmethod
    def parse_options(cls, spec: ModelSpec) -> ArchOptions:
        """Also check ``top_k`` against ``model.num_experts``, so a config fails on load."""
        options = super().parse_options(spec)
        assert isinstance(options, TaskMoEOptions)
        if options.top_k > spec.num_experts:
            raise ConfigError(
                f"model.options ({spec.arch}): top_k: {options.top_k} is more than "
                f"model.num_experts ({spec.num_experts})"
            )
        return options

    # ------------------------------------------------------------------ routing
    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Noise-free logits: [T, 1, E] in task routing (same for every row), else [T, B, E]."""
        if self.task_logits is not None:
            return self.task_logits.unsqueeze(1)
        assert self.router is not None
        logits = self.router(x).view(x.shape[0], self.num_tasks, self.num_experts)
        return logits.transpose(0, 1)

    def task_experts(self) -> dict[int, list[int]]:
        """Each task's k experts in eval (task routing): its exact sub-network, ascending."""
        if self.task_logits is None:
            raise ValueError("task_experts() needs routing 'task'; with 'row' routes vary by row")
        with torch.no_grad():
            selected, _ = top_k_route(self.task_logits.unsqueeze(1), self.options.top_k)
        return {task: sorted(selected[task, 0].tolist()) for task in range(self.num_tasks)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.router_logits(x)
        if self.training and self.options.noise > 0:
            shape = (self.num_tasks, x.shape[0], self.num_experts)
            logits = logits + self.options.noise * torch.randn(
                shape, device=x.device, dtype=logits.dtype
            )
        selected, weights = top_k_route(logits, self.options.top_k)  # [T, R, k], R in {1, B}
        self.last_gate_weights = dense_gates(selected, weights, self.num_experts).expand(
            self.num_tasks, x.shape[0], self.num_experts
        )
        training = self.training and x.shape[0] > 0  # an empty batch has no routing statistics
        self.auxiliary_loss = self._auxiliary(logits, selected) if training else None
        rows_shape = (self.num_tasks, x.shape[0], self.options.top_k)
        return self._dispatch(x, selected.expand(rows_shape), weights.expand(rows_shape))

    def _auxiliary(self, logits: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """balance_weight * load balance - mi_weight * I(task; expert), from [T, R, E] logits."""
        probs = torch.softmax(logits, dim=-1)
        balance = load_balancing_loss(probs, selected)
        information = task_expert_mutual_information(probs.mean(dim=1))
        return self.options.balance_weight * balance - self.options.mi_weight * information

    # ------------------------------------------------------------------ sparse dispatch
    def _dispatch(
        self, x: torch.Tensor, selected: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Sort, merge, segment, gather, grouped expert MLP, weighted scatter-add.

        Shapes: x [B, in], selected / weights [T, B, k] -> [T, B, out].
        """
        tasks, batch, k = selected.shape
        row_ids = torch.arange(batch, device=x.device).view(1, batch, 1)
        task_ids = torch.arange(tasks, device=x.device).view(tasks, 1, 1)
        rows = row_ids.expand(tasks, batch, k).reshape(-1)
        slots = (task_ids * batch + row_ids).expand(tasks, batch, k).reshape(-1)
        experts, weights = selected.reshape(-1), weights.reshape(-1)

        order, _ = sort_by_expert(experts, rows, batch)
        rows, experts, slots, weights = rows[order], experts[order], slots[order], weights[order]
        pair_rows, pair_experts, pair_of = merge_duplicates(rows, experts)
        sizes = segment_sizes(pair_experts, self.num_experts).tolist()
        pair_out = self._run_experts(gather_rows(x, pair_rows), sizes)  # [P, out]
        out = weighted_scatter_add(gather_rows(pair_out, pair_of), weights, slots, tasks * batch)
        return out.view(tasks, batch, self.out_dim)

    def _run_experts(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """The ExpertBank's MLP, each layer a grouped GEMM over expert segments: [P, in] ->
        [P, out]."""
        bank = self.experts
        last = len(bank.weights) - 1
        for index, (weight, bias) in enumerate(zip(bank.weights, bank.biases, strict=True)):
            x = grouped_addmm(x, sizes, weight, bias)
            if index < last or bank.activate_last:
                x = bank.dropout(torch.relu(x))
        return x

    def extra_repr(self) -> str:
        options = self.options
        return f"routing={options.routing}, top_k={options.top_k}, noise={options.noise}"


def top_k_route(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k experts and their weights, softmax renormalised over the k selected.

    Equal to the full softmax restricted to the top k and rescaled to sum to 1 (Shazeer's
    ``softmax(KeepTopK(H(x)))``). With k = 1 the weight is always 1, so the router then
    learns only from the auxiliary terms.

    Shapes: logits [..., E] -> selected [..., k] int64, weights [..., k].
    """
    values, selected = torch.topk(logits, k, dim=-1)
    return selected, torch.softmax(values, dim=-1)


def dense_gates(selected: torch.Tensor, weights: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Sparse routing weights laid over all experts, zero where unselected (detached).

    Shapes: selected / weights [..., k] -> [..., E].
    """
    gates = weights.new_zeros(*weights.shape[:-1], num_experts)
    return gates.scatter_(-1, selected, weights.detach())


def load_balancing_loss(probs: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer load balance ``E * sum_e f_e * P_e``; 1 when perfectly uniform.

    f_e (fraction of the (row, task) assignments routed to e, counted, not differentiable)
    times P_e (mean router probability of e, differentiable): the gradient lowers the
    probability of experts that receive more than their share.

    Shapes: probs [..., E] (rows sum to 1), selected [..., k] -> scalar.
    """
    num_experts = probs.shape[-1]
    counts = torch.bincount(selected.reshape(-1), minlength=num_experts)
    fraction = counts.to(probs.dtype) / selected.numel()
    mean_prob = probs.reshape(-1, num_experts).mean(dim=0)
    return num_experts * (fraction * mean_prob).sum()


def task_expert_mutual_information(expert_given_task: torch.Tensor) -> torch.Tensor:
    """``I(task; expert) = H(E) - H(E|T)`` with P(t) uniform over the tasks given.

    High when every task concentrates on its own experts (low H(E|T)) while the tasks
    together spread over the pool (high H(E)); at most ``log min(T, E)``, 0 when every task
    routes alike.

    Shapes: expert_given_task [T, E] (rows sum to 1: P(e|t)) -> scalar, in nats.
    """
    marginal = expert_given_task.mean(dim=0)  # P(e) = sum_t P(t) P(e|t)
    return entropy(marginal) - entropy(expert_given_task).mean()


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy over the last axis, in nats: [..., E] -> [...]."""
    return -(probs * torch.log(probs.clamp(min=PROBABILITY_FLOOR))).sum(dim=-1)


__all__ = [
    "TaskMoE",
    "TaskMoEOptions",
    "dense_gates",
    "entropy",
    "load_balancing_loss",
    "task_expert_mutual_information",
    "top_k_route",
]
