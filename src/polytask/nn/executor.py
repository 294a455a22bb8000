"""The one executor of every plan: levels of fused experts and gates, as the plan says.

:class:`PlanNetwork` is built from a :class:`~polytask.plan.schema.Plan` and the encoder's
output width. Each level holds one expert bank (all experts of the level in fused tensors),
one gate bank (all its gates) and, for HoME, its self gates; the level gathers what each
expert and gate reads from the level below with one index per level (a slice when the reads
are in order), so there is no Python loop over experts, gates or tasks.

Its output (:class:`ArchOutput`) is typed: the per-task representations, the representation
every task reads when there is one (towers then read it once, unexpanded), each level's gate
weights, the auxiliary loss, and the representation that fast-mode gradient balancing
differentiates at. Nothing is kept on the module between calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from polytask.nn.blocks import ExpertBlocks, GateBlocks, load_first_blocks
from polytask.nn.dselect import DSelectKGates
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import (
    FixedGates,
    GateBank,
    IdentityGates,
    SelfGates,
    StitchGates,
)
from polytask.nn.normed import NormedExpertBank
from polytask.nn.paired_gates import softmax_gates
from polytask.nn.row_routing import LastLevelRoute, RowPairs
from polytask.nn.task_bottom import TaskBottomBank
from polytask.nn.topk import TopKGates
from polytask.plan.cut import LevelCut
from polytask.plan.schema import ExpertsSpec, GatesSpec, Level, Plan

ExpertModule = ExpertBank | NormedExpertBank | TaskBottomBank | ExpertBlocks
"""Every expert bank: [B, in] or [E, B, in] -> [E, B, out], with ``select``."""


def build_experts(spec: ExpertsSpec, in_dim: int) -> ExpertModule:
    """The expert bank a level's ``experts`` describes: [B, in] or [E, B, in] -> [E, B, out]."""
    if spec.blocks is not None:
        return ExpertBlocks(
            [ExpertBank(size, in_dim, spec.hidden, dropout=spec.dropout) for size in spec.blocks]
        )
    if spec.kind == "mlp":
        return ExpertBank(spec.count, in_dim, spec.hidden, dropout=spec.dropout)
    if spec.kind == "normed":
        return NormedExpertBank(
            spec.count, in_dim, spec.hidden, spec.norm, spec.dropout, spec.feature_gate_rank
        )
    return TaskBottomBank(
        spec.count,
        in_dim,
        spec.hidden,
        spec.se_hidden,
        spec.task_embedding_dim,
        spec.hyper_rank,
        spec.transform_dim,
        spec.dropout,
    )


def build_gates(spec: GatesSpec, num_experts: int, in_dim: int) -> GateBank:
    """The gate bank a level's ``gates`` describes (in blocks: one bank per block, over the
    block's prefix of the experts)."""
    if spec.blocks is not None:
        banks, start = [], 0
        for block in spec.blocks:
            end = start + block.count
            part = spec.model_copy(
                update={
                    "allowed": [[e - block.start for e in m] for m in spec.allowed[start:end]],
                    "reads": spec.reads[start:end] if spec.reads is not None else None,
                    "blocks": None,
                }
            )
            banks.append(build_gates(part, block.experts - block.start, in_dim))
            start = end
        pools = [(block.start, block.experts) for block in spec.blocks]
        return GateBlocks(banks, pools)
    allowed = spec.allowed
    if spec.kind == "identity":
        return IdentityGates(allowed, num_experts)
    if spec.kind == "softmax":
        return softmax_gates(allowed, num_experts, in_dim, per_gate_input=spec.reads is not None)
    if spec.kind == "fixed":
        return FixedGates(allowed, num_experts)
    if spec.kind == "stitch":
        return StitchGates(allowed, num_experts, spec.init_self)
    if spec.kind == "dselect":
        return DSelectKGates(
            allowed,
            num_experts,
            in_dim,
            k=spec.k,
            gamma=spec.gamma,
            per_example=spec.per_example,
            entropy_reg=spec.entropy_reg,
            source_experts=spec.source_experts,
            columns=spec.columns,
        )
    return TopKGates(
        allowed,
        num_experts,
        in_dim,
        top_k=spec.top_k,
        routing=spec.routing,
        noise=spec.noise,
        balance_weight=spec.balance_weight,
        mi_weight=spec.mi_weight,
    )


class Reader(nn.Module):
    """Which of the R inputs each of N members (experts or gates) reads: everything as is
    (``None``: the one shared input), a leading slice (reads 0..N-1 in order: a view), or an
    index (one gather).

    Shapes: [B, in] or [R, B, in] -> the same, or [N, B, in].
    """

    index: torch.Tensor | None

    def __init__(self, reads: Sequence[int] | None) -> None:
        super().__init__()
        self.prefix: int | None = None
        index = None
        if reads is not None:
            if list(reads) == list(range(len(reads))):
                self.prefix = len(reads)
            else:
                index = torch.tensor(list(reads), dtype=torch.long)
        self.register_buffer("index", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prefix is not None:
            return x if x.shape[0] == self.prefix else x[: self.prefix]
        if self.index is not None:
            return x.index_select(0, self.index)
        return x


@dataclass
class LevelOutput:
    out: torch.Tensor  # [G, B, D]
    experts: torch.Tensor | None  # [E, B, D] when the experts ran densely
    weights: torch.Tensor | None  # [G, B, E] detached
    auxiliary: torch.Tensor | None


class LevelModule(nn.Module):
    """One level: experts, gates, optional self gates (see the module docstring)."""

    def __init__(self, level: Level, in_dim: int) -> None:
        super().__init__()
        self.experts: ExpertModule = build_experts(level.experts, in_dim)
        self.gates: GateBank = build_gates(level.gates, level.experts.count, in_dim)
        self.self_gates: SelfGates | None = (
            SelfGates(level.self_gates, in_dim) if level.self_gates is not None else None
        )
        self.expert_reader = Reader(level.experts.reads)
        self.gate_reader = Reader(level.gates.reads)

    def forward(self, x: torch.Tensor) -> LevelOutput:
        gate_input = self.gate_reader(x)
        mixed = self.gates.mix(gate_input, self.expert_reader(x), self.experts)
        out = mixed.out
        if self.self_gates is not None:
            assert mixed.experts is not None
            out = out + self.self_gates(gate_input, mixed.experts)
        return LevelOutput(out, mixed.experts, mixed.weights, mixed.auxiliary)

    def copy_selected(self, source: LevelModule, cut: LevelCut) -> None:
        """Fill this (freshly built, cut-plan) level with ``source``'s kept gates and experts."""
        self.experts.load_state_dict(source.experts.select(cut.experts).state_dict())
        self.gates.load_state_dict(source.gates.select(cut.gates, cut.experts).state_dict())
        if source.self_gates is not None:
            assert self.self_gates is not None
            kept = source.self_gates.select(cut.gates, cut.experts)
            self.self_gates.load_state_dict(kept.state_dict())

    def copy_grown(self, source: LevelModule) -> None:
        """Fill this (freshly built, grown-plan) level's first blocks with ``source``'s
        experts and gates; the blocks growth added keep their fresh initialisation."""
        load_first_blocks(self.experts, source.experts)
        load_first_blocks(self.gates, source.gates)


@dataclass
class ArchOutput:
    """What a sharing architecture hands the towers and the training step.

    tasks [T, B, D]: task t's representation (an expanded view of ``common`` when every
    task reads the same one). common [B, D]: that one representation, else None.
    gates: per level, each gate's weights [G, B, E] (detached; None for kinds without
    per-row weights). auxiliary: the levels' training regularisers, summed (or None).
    shared: the representation fast-mode gradient balancing differentiates at, or None for
    the encoder output.
    """

    tasks: torch.Tensor
    common: torch.Tensor | None
    gates: list[torch.Tensor | None]
    auxiliary: torch.Tensor | None
    shared: torch.Tensor | None
    task_index: torch.Tensor | None = None  # which last-level gate each task reads

    @property
    def task_gates(self) -> torch.Tensor | None:
        """The last level's gate weights as each task reads them, [T, B, E] (or None)."""
        last = self.gates[-1] if self.gates else None
        if last is None or self.task_index is None:
            return last
        return last.index_select(0, self.task_index)


class PlanNetwork(nn.Module):
    """Runs a :class:`Plan`: encoder output(s) -> per-task representations.

    Shapes: x [B, in] (one shared encoder) or [T, B, in] (per-task encoders) ->
    :class:`ArchOutput` with tasks [T, B, out].
    """

    task_index: torch.Tensor

    def __init__(self, plan: Plan, in_dim: int) -> None:
        super().__init__()
        self.plan = plan
        self.in_dim = in_dim
        dims = [in_dim] + [level.experts.out_dim for level in plan.levels[:-1]]
        self.levels = nn.ModuleList(
            LevelModule(level, dim) for level, dim in zip(plan.levels, dims, strict=True)
        )
        task_gates = plan.task_gates
        self.out_dim = plan.levels[-1].experts.out_dim
        self.num_tasks = len(task_gates)
        self.common_gate = task_gates[0] if len(set(task_gates)) == 1 else None
        self.in_order = task_gates == list(range(plan.levels[-1].gates.count))
        self.register_buffer("task_index", torch.tensor(task_gates), persistent=False)
        last = self.level_modules[-1]
        routable = self.common_gate is None and LastLevelRoute.supports(
            last.experts, last.gates, last.self_gates is not None
        )
        # the last level's index tables for routing by row (a gate every task reads runs
        # densely: routing would compute it once per asking task instead of once per row)
        self.last_route = LastLevelRoute(last.gates, task_gates) if routable else None

    @property
    def level_modules(self) -> list[LevelModule]:
        """The levels, typed (a ModuleList's items are plain modules to a type checker)."""
        return cast(list[LevelModule], list(self.levels))

    def forward(self, x: torch.Tensor) -> ArchOutput:
        gates: list[torch.Tensor | None] = []
        auxiliary: torch.Tensor | None = None
        first_experts: torch.Tensor | None = None
        for number, level in enumerate(self.level_modules):
            result = level(x)
            if number == 0:
                first_experts = result.experts
            gates.append(result.weights)
            if result.auxiliary is not None:
                auxiliary = result.auxiliary if auxiliary is None else auxiliary + result.auxiliary
            x = result.out
        common = None
        if self.common_gate is not None:
            common = x[self.common_gate]
            tasks = common.expand(self.num_tasks, -1, -1)
        else:
            tasks = x if self.in_order else x.index_select(0, self.task_index)
        balance_at = self.plan.balance_at
        shared = (
            first_experts
            if balance_at == "experts"
            else (common if common is not None else tasks)
            if balance_at == "output"
            else None
        )
        task_index = None if self.in_order else self.task_index
        return ArchOutput(tasks, common, gates, auxiliary, shared, task_index)

    def forward_pairs(
        self, x: torch.Tensor, pairs: RowPairs
    ) -> tuple[torch.Tensor, list[torch.Tensor | None], torch.Tensor | None]:
        """Each pair's representation, its task's last-level output at its row [P, out];
        the levels' gate weights (None for a level routed by row) and auxiliary loss.

        The levels below the last run densely; the last one by row where it can
        (:class:`~polytask.nn.row_routing.LastLevelRoute`), else densely and read per pair."""
        gates: list[torch.Tensor | None] = []
        auxiliary: torch.Tensor | None = None
        levels = self.level_modules
        for level in levels[:-1]:
            result = level(x)
            gates.append(result.weights)
            if result.auxiliary is not None:
                auxiliary = result.auxiliary if auxiliary is None else auxiliary + result.auxiliary
            x = result.out
        last = levels[-1]
        route = self.last_route
        if route is not None and LastLevelRoute.supports(
            last.experts, last.gates, last.self_gates is not None
        ):
            assert isinstance(last.experts, ExpertBank)
            out = route(last.experts, last.gates, last.expert_reader(x), last.gate_reader(x), pairs)
            gates.append(None)
            return out, gates, auxiliary
        result = last(x)
        gates.append(result.weights)
        if result.auxiliary is not None:
            auxiliary = result.auxiliary if auxiliary is None else auxiliary + result.auxiliary
        flat = result.out.reshape(-1, result.out.shape[-1])
        index = self.task_index.index_select(0, pairs.tasks) * pairs.num_rows + pairs.rows
        return flat.index_select(0, index), gates, auxiliary

    def forward_own_pairs(self, values: torch.Tensor, pairs: RowPairs) -> torch.Tensor | None:
        """Each pair's last-level output [P, out] from its own input ``values`` [P, in], for
        a plan of one level of identity gates whose experts read one encoder per task
        (:func:`~polytask.nn.row_routing.reads_own_encoder`); None where that level is not a
        plain expert bank (a grown one), which then needs the [T, B, in] layout."""
        last = self.level_modules[-1]
        route = self.last_route
        if (
            len(self.level_modules) != 1
            or route is None
            or type(last.gates) is not IdentityGates
            or not LastLevelRoute.supports(last.experts, last.gates, last.self_gates is not None)
        ):
            return None
        assert isinstance(last.experts, ExpertBank)
        return route.own_inputs(last.experts, values, pairs)

    def cut(self, cuts: list[LevelCut], plan: Plan) -> PlanNetwork:
        """The network of ``plan`` (this one's plan cut by ``cuts``) with the kept weights."""
        network = PlanNetwork(plan, self.in_dim)
        levels = zip(network.level_modules, self.level_modules, cuts, strict=True)
        for target, source, cut in levels:
            target.copy_selected(source, cut)
        return network

    def grow(self, plan: Plan) -> PlanNetwork:
        """The network of ``plan`` (this network's plan with tasks added, see
        :func:`polytask.plan.grow.add_tasks`) holding this network's weights as its first
        blocks; what was added is freshly initialised."""
        network = PlanNetwork(plan, self.in_dim)
        for target, source in zip(network.level_modules, self.level_modules, strict=True):
            target.copy_grown(source)
        return network

    def extra_repr(self) -> str:
        counts = [level.experts.count for level in self.plan.levels]
        return f"source={self.plan.source}, experts per level={counts}"
