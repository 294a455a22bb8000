"""Top-k routing gates: each gate (a task) sends each row to k of the level's experts.

Routing (``routing``):

- ``"task"``: the router is a learned [G, E] logit table, so the route depends on the gate
  only. In eval every row of gate g uses the same k experts and the gate's sub-network is
  exactly those experts (:meth:`TopKGates.fixed_support`), which is what lets a slim per-task
  model be cut out exactly. During training Gaussian noise is added per (row, gate) before
  the top-k (noisy top-k, Shazeer et al. 2017), so that selection can move and unselected
  experts' logits get a learning signal.
- ``"row"``: one linear router per gate on the input, top-k per (row, gate), as in a classic
  sparse MoE layer with task-specific gates (Mod-Squad, Chen et al. CVPR 2023).

Two auxiliary terms (training only) make each gate use a small, identifiable subset while
the whole pool stays in use:

- load balancing (Switch Transformer): ``E * sum_e f_e * P_e``, f_e the fraction of routed
  (row, gate) assignments sent to expert e, P_e the mean router probability of expert e;
- task-expert mutual information (Mod-Squad): ``-I(task; expert)`` with
  ``I = H(E) - H(E|T)``, P(e|t) the mean router probability of gate t, P(t) uniform.

Experts run sparsely with the ops of :mod:`polytask.nn.dispatch`: no expert runs on a row
that was not routed to it. While a graph is traced for export the segment sizes would be
frozen to the example batch, so tracing takes a dense path with the same outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from polytask.nn.blocks import ExpertBlocks
from polytask.nn.dispatch import (
    gather_rows,
    merge_duplicates,
    segment_sizes,
    sort_by_expert,
    weighted_scatter_add,
)
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import (
    GateBank,
    LeanMixture,
    Mixed,
    blocked_mask,
    mix_experts,
    renumber_allowed,
)

TASK_LOGIT_INIT_STD = 0.1
"""Spread of the initial task logit table: small against the routing noise, so early routes
explore, but non-zero, so tasks start apart even with ``noise: 0`` (a constant table would
give every task the same experts, where the MI term has zero gradient)."""

PROBABILITY_FLOOR = 1e-12  # keeps p * log p finite (and its gradient) if a softmax underflows


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


def dispatch(
    x: torch.Tensor,
    selected: torch.Tensor,
    weights: torch.Tensor,
    experts: ExpertBank | ExpertBlocks,
) -> torch.Tensor:
    """Sort, merge, segment, gather, grouped expert MLP, weighted scatter-add.

    Shapes: x [B, in], selected / weights [G, B, k] -> [G, B, out].
    """
    gates, batch, k = selected.shape
    row_ids = torch.arange(batch, device=x.device).view(1, batch, 1)
    gate_ids = torch.arange(gates, device=x.device).view(gates, 1, 1)
    rows = row_ids.expand(gates, batch, k).reshape(-1)
    slots = (gate_ids * batch + row_ids).expand(gates, batch, k).reshape(-1)
    chosen, flat_weights = selected.reshape(-1), weights.reshape(-1)

    order, _ = sort_by_expert(chosen, rows, batch)
    rows, chosen, slots = rows[order], chosen[order], slots[order]
    flat_weights = flat_weights[order]
    pair_rows, pair_experts, pair_of = merge_duplicates(rows, chosen)
    sizes = segment_sizes(pair_experts, experts.num_experts).tolist()
    pair_out = experts.forward_segments(gather_rows(x, pair_rows), sizes)  # [P, out]
    out = weighted_scatter_add(gather_rows(pair_out, pair_of), flat_weights, slots, gates * batch)
    return out.view(gates, batch, experts.out_dim)


class TopKGates(GateBank):
    """G gates each routing every row to its top-k of the level's E experts (see the module
    docstring). The experts must read the shared input (an :class:`ExpertBank`, or banks in
    blocks). A gate that does not allow every expert has the others' logits at -inf: it
    never routes to them.

    Shapes: x [B, in] -> mixtures [G, B, out]; weights reported [G, B, E].
    """

    blocked: torch.Tensor | None

    def __init__(
        self,
        allowed: Sequence[Sequence[int]],
        num_experts: int,
        in_dim: int,
        *,
        top_k: int = 2,
        routing: str = "task",
        noise: float = 1.0,
        balance_weight: float = 0.01,
        mi_weight: float = 0.01,
    ) -> None:
        super().__init__(allowed, num_experts)
        self.in_dim, self.top_k, self.routing, self.noise = in_dim, top_k, routing, noise
        self.balance_weight, self.mi_weight = balance_weight, mi_weight
        self.register_buffer("blocked", blocked_mask(self.allowed, num_experts), persistent=False)
        self.task_logits: nn.Parameter | None = None
        self.router: nn.Linear | None = None
        if routing == "task":
            self.task_logits = nn.Parameter(torch.empty(self.num_gates, num_experts))
            nn.init.normal_(self.task_logits, std=TASK_LOGIT_INIT_STD)
        else:
            self.router = nn.Linear(in_dim, self.num_gates * num_experts)

    def router_logits(self, x: torch.Tensor | None) -> torch.Tensor:
        """Noise-free logits: [G, 1, E] in task routing (same for every row; ``x`` may be
        None), else [G, B, E]; -inf where a gate may not route."""
        if self.task_logits is not None:
            logits = self.task_logits.unsqueeze(1)
        else:
            assert self.router is not None and x is not None
            logits = self.router(x).view(x.shape[0], self.num_gates, self.num_experts)
            logits = logits.transpose(0, 1)
        if self.blocked is not None:
            logits = logits.masked_fill(self.blocked, float("-inf"))
        return logits

    def routes(self) -> list[list[int]]:
        """Each gate's k experts in eval under task routing, ascending."""
        if self.task_logits is None:
            raise ValueError("routes() needs routing 'task'; with 'row' routes vary by row")
        with torch.no_grad():
            selected, _ = top_k_route(self.router_logits(None), self.top_k)
        return [sorted(selected[gate, 0].tolist()) for gate in range(self.num_gates)]

    def mix(
        self, gate_input: torch.Tensor, expert_input: torch.Tensor, experts: nn.Module
    ) -> Mixed:
        assert isinstance(experts, ExpertBank | ExpertBlocks), "top-k routing runs mlp experts"
        batch = gate_input.shape[0]
        logits = self.router_logits(gate_input)
        if self.training and self.noise > 0:
            shape = (self.num_gates, batch, self.num_experts)
            noise = torch.randn(shape, device=gate_input.device, dtype=logits.dtype)
            logits = logits + self.noise * noise
        selected, weights = top_k_route(logits, self.top_k)  # [G, R, k], R in {1, B}
        dense = dense_gates(selected, weights, self.num_experts)
        report = dense.expand(self.num_gates, batch, self.num_experts)
        auxiliary = self._auxiliary(logits, selected) if self.training and batch > 0 else None
        if torch.jit.is_tracing():
            expert_out = experts(expert_input)  # [E, B, out]: static shapes for a trace
            if self.task_logits is not None:
                out = torch.einsum("ge,ebd->gbd", dense[:, 0], expert_out)
            else:
                out = mix_experts(dense_gates(selected, weights, self.num_experts), expert_out)
            return Mixed(out, expert_out, report, auxiliary)
        rows_shape = (self.num_gates, batch, self.top_k)
        out = dispatch(
            expert_input, selected.expand(rows_shape), weights.expand(rows_shape), experts
        )
        return Mixed(out, None, report, auxiliary)

    def _auxiliary(self, logits: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """balance_weight * load balance - mi_weight * I(task; expert), from [G, R, E] logits."""
        probs = torch.softmax(logits, dim=-1)
        balance = load_balancing_loss(probs, selected)
        information = task_expert_mutual_information(probs.mean(dim=1))
        return self.balance_weight * balance - self.mi_weight * information

    def select(self, gates: Sequence[int], experts: Sequence[int]) -> TopKGates:
        kept = TopKGates(
            renumber_allowed(self.allowed, gates, experts),
            len(experts),
            self.in_dim,
            top_k=self.top_k,
            routing=self.routing,
            noise=self.noise,
            balance_weight=self.balance_weight,
            mi_weight=self.mi_weight,
        )
        rows = torch.tensor(list(gates), dtype=torch.long)
        columns = torch.tensor(list(experts), dtype=torch.long)
        with torch.no_grad():
            if self.task_logits is not None:
                assert kept.task_logits is not None
                kept.task_logits.copy_(self.task_logits[rows][:, columns])
            else:
                assert self.router is not None and kept.router is not None
                shape = (self.num_gates, self.num_experts)
                weight = self.router.weight.view(*shape, self.in_dim)
                kept.router.weight.copy_(weight[rows][:, columns].reshape(-1, self.in_dim))
                kept.router.bias.copy_(self.router.bias.view(shape)[rows][:, columns].reshape(-1))
        return kept

    def fixed_support(self) -> list[list[int]] | None:
        return self.routes() if self.task_logits is not None else None

    def lean(self, gate: int) -> LeanMixture | None:
        if self.task_logits is None:
            return None
        logits = self.router_logits(None).detach()[gate : gate + 1]
        selected, weights = top_k_route(logits, self.top_k)
        return LeanMixture(gate, selected[0, 0].tolist(), weights[0, 0])

    def extra_repr(self) -> str:
        return f"routing={self.routing}, top_k={self.top_k}, noise={self.noise}"
