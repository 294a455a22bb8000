"""HoME (Wang et al., "HoME: Hierarchy of Multi-Gate Experts for Multi-Task Learning at
Kuaishou", 2024): a two-level expert hierarchy, tasks -> task groups -> all tasks.

The paper fixes three failure modes of MMoE-style models, each with one mechanism here:

* expert collapse (experts with very different output scales, many dead ReLUs): every expert
  layer is ``linear -> per-expert normalisation -> Swish``, so all experts emit outputs on
  the same scale and gates can weigh them fairly (:class:`ExpertNorm`, :class:`NormedExperts`);
* expert degradation (a shared expert taken over by one task): a hierarchy mask. A meta level
  gates shared and per-group experts per task group; a task level then gates shared, group
  and task experts per task, each reading the meta representation it belongs to
  (:class:`MetaLevel`, :class:`TaskLevel`);
* expert underfitting (sparse tasks ignoring their own experts): feature gates give every
  expert its own re-weighting of the input, ``x * 2 * sigmoid(x A_e B_e)`` (:class:`FeatureGates`),
  and a self gate adds a residual mixture of each task's own experts to its representation.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt, field_validator
from torch import nn

from polytask.arch.base import ARCHS, ArchOptions, SharingArch
from polytask.config import ModelSpec
from polytask.errors import ConfigError
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import MaskedGates, mix_experts

NormKind = Literal["batch", "layer"]


class HoMEOptions(ArchOptions):
    task_groups: list[list[NonNegativeInt]] | None = Field(
        None,
        min_length=1,
        description="task categories as lists of task indices, each task in exactly one; "
        "default: one group holding every task",
    )
    shared_experts: int = Field(1, ge=1, description="experts shared by all tasks, per level")
    group_experts: int = Field(1, ge=1, description="experts owned by each group, per level")
    task_experts: int = Field(1, ge=1, description="task-level experts owned by each task")
    expert_norm: NormKind = Field(
        "batch", description="per-expert normalisation before Swish: 'batch' or 'layer'"
    )
    feature_gate_rank: int = Field(
        4, ge=0, description="rank of each expert's low-rank feature gate; 0 disables them"
    )

    @field_validator("task_groups")
    @classmethod
    def _disjoint_groups(cls, groups: list[list[int]] | None) -> list[list[int]] | None:
        if groups is None:
            return None
        if any(not group for group in groups):
            raise ValueError("every task group needs at least one task index")
        flat = [task for group in groups for task in group]
        repeated = sorted({task for task in flat if flat.count(task) > 1})
        if repeated:
            raise ValueError(f"task(s) {repeated} appear in more than one group")
        return groups


class ExpertNorm(nn.Module):
    """Normalisation of E experts' outputs, statistics and affine parameters per expert.

    ``batch``: batch normalisation with statistics per (expert, feature), computed as one
    ``F.batch_norm`` over the [B, E*D] view, so E experts cost one call. A training batch of
    a single row has no variance; it is normalised with the running statistics instead.
    ``layer``: layer normalisation over each expert's D features, then a per-expert affine.

    Shapes: [E, B, D] -> [E, B, D].
    """

    def __init__(self, num_experts: int, dim: int, kind: NormKind) -> None:
        super().__init__()
        self.kind = kind
        self.weight = nn.Parameter(torch.ones(num_experts, 1, dim))
        self.bias = nn.Parameter(torch.zeros(num_experts, 1, dim))
        if kind == "batch":
            self.register_buffer("running_mean", torch.zeros(num_experts * dim))
            self.register_buffer("running_var", torch.ones(num_experts * dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        experts, batch, dim = x.shape
        if self.kind == "layer":
            return F.layer_norm(x, (dim,)) * self.weight + self.bias
        flat = x.transpose(0, 1).reshape(batch, experts * dim)
        flat = F.batch_norm(
            flat,
            self.running_mean,
            self.running_var,
            training=self.training and batch > 1,
            momentum=0.1,
            eps=1e-5,
        )
        return flat.view(batch, experts, dim).transpose(0, 1) * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"kind={self.kind}, experts={self.weight.shape[0]}, dim={self.weight.shape[2]}"


class NormedExperts(nn.Module):
    """E experts whose every layer is ``linear -> ExpertNorm -> Swish`` (the paper's expert).

    One single-layer :class:`ExpertBank` per layer keeps all experts fused; the loop is over
    layers. Shapes: [B, in] (shared) or [E, B, in] (per expert) -> [E, B, hidden[-1]].
    """

    def __init__(
        self, num_experts: int, in_dim: int, hidden: list[int], norm: NormKind, dropout: float
    ) -> None:
        super().__init__()
        sizes = [in_dim, *hidden]
        self.layers = nn.ModuleList(
            ExpertBank(num_experts, fan_in, [fan_out], activate_last=False)
            for fan_in, fan_out in itertools.pairwise(sizes)
        )
        self.norms = nn.ModuleList(ExpertNorm(num_experts, width, norm) for width in hidden)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = self.dropout(F.silu(norm(layer(x))))
        return x


class FeatureGates(nn.Module):
    """Per-expert low-rank feature gates: expert e reads ``x * 2 * sigmoid(x A_e B_e)``.

    The factor lies in (0, 2), so an expert can both damp and amplify features. ``B`` starts at
    zero (as LoRA's up-projection does), so every gate starts at exactly 1 and the network
    starts as the same network without feature gates; training then specialises the experts'
    views of the input.

    Shapes: x [B, D] (shared) or [E, B, D] (per expert) -> gated inputs [E, B, D].
    """

    def __init__(self, num_experts: int, dim: int, rank: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.down = nn.Parameter(torch.empty(num_experts, dim, rank))
        self.up = nn.Parameter(torch.zeros(num_experts, rank, dim))
        bound = 1.0 / dim**0.5
        nn.init.uniform_(self.down, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            low = torch.einsum("bd,edr->ebr", x, self.down)
            x = x.expand(self.num_experts, -1, -1)
        else:
            low = torch.bmm(x, self.down)
        return x * (2.0 * torch.sigmoid(torch.bmm(low, self.up)))

    def extra_repr(self) -> str:
        experts, dim, rank = self.down.shape
        return f"experts={experts}, dim={dim}, rank={rank}"


def _gated_experts(
    num_experts: int, in_dim: int, spec: ModelSpec, options: HoMEOptions
) -> tuple[nn.Module, NormedExperts]:
    """Feature gates (or identity) and the normalised experts they feed."""
    rank = options.feature_gate_rank
    gates: nn.Module = FeatureGates(num_experts, in_dim, rank) if rank > 0 else nn.Identity()
    experts = NormedExperts(num_experts, in_dim, spec.hidden, options.expert_norm, spec.dropout)
    return gates, experts


class MetaLevel(nn.Module):
    """First level: s shared experts and k experts per group, all reading the input x.

    Pool layout: [shared..., group 0 experts..., group G-1 experts...]. Gate 0 (the shared
    representation) weights the whole pool; gate 1+g (group g) weights the shared experts and
    group g's own, so a group's experts serve only that group's tasks.

    Shapes: x [B, in] -> representations [1+G, B, D] (shared first, then one per group).
    """

    def __init__(self, in_dim: int, num_groups: int, spec: ModelSpec, options: HoMEOptions) -> None:
        super().__init__()
        s, k = options.shared_experts, options.group_experts
        self.feature_gates, self.experts = _gated_experts(s + num_groups * k, in_dim, spec, options)
        allowed = torch.zeros(1 + num_groups, s + num_groups * k, dtype=torch.bool)
        allowed[:, :s] = True
        allowed[0] = True
        for group in range(num_groups):
            allowed[1 + group, s + group * k : s + (group + 1) * k] = True
        self.gates = MaskedGates(allowed, in_dim)
        self.last_gate_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expert_out = self.experts(self.feature_gates(x))  # [E, B, D]
        gates = self.gates(x)  # [1+G, B, E]
        self.last_gate_weights = gates.detach()
        return mix_experts(gates, expert_out)


class TaskLevel(nn.Module):
    """Second level: s shared, k per group and j per task experts, gated per task.

    Pool layout: [shared..., group experts (by group)..., task experts (by task)...]. Shared
    experts read the meta shared representation, group and task experts their group's; task
    t's gate (reading its group's representation) weights the shared experts, its group's and
    its own. The self gate adds a residual mixture of task t's own experts: sigmoid-weighted
    for one expert, softmax-weighted for several, as in the paper.

    Shapes: meta [1+G, B, D] -> [T, B, D'].
    """

    def __init__(
        self, dim: int, task_group: torch.Tensor, spec: ModelSpec, options: HoMEOptions
    ) -> None:
        super().__init__()
        num_tasks, num_groups = len(task_group), int(task_group.max()) + 1
        s, k, j = options.shared_experts, options.group_experts, options.task_experts
        num_experts = s + num_groups * k + num_tasks * j
        self.task_experts = j
        self.feature_gates, self.experts = _gated_experts(num_experts, dim, spec, options)
        owner = torch.cat(
            [
                torch.zeros(s, dtype=torch.long),
                1 + torch.arange(num_groups).repeat_interleave(k),
                1 + task_group.repeat_interleave(j),
            ]
        )
        # Which meta representation each expert reads, and which one each task's gate reads.
        self.register_buffer("owner", owner, persistent=False)
        self.register_buffer("gate_input", 1 + task_group, persistent=False)
        allowed = torch.zeros(num_tasks, num_experts, dtype=torch.bool)
        allowed[:, :s] = True
        for task, group in enumerate(task_group.tolist()):
            allowed[task, s + group * k : s + (group + 1) * k] = True
            first_own = s + num_groups * k + task * j
            allowed[task, first_own : first_own + j] = True
        self.gates = MaskedGates(allowed, dim, per_gate_input=True)
        self.self_weight = nn.Parameter(torch.empty(num_tasks, dim, j))
        self.self_bias = nn.Parameter(torch.empty(num_tasks, 1, j))
        bound = 1.0 / dim**0.5
        nn.init.uniform_(self.self_weight, -bound, bound)
        nn.init.uniform_(self.self_bias, -bound, bound)
        self.last_gate_weights: torch.Tensor | None = None

    def forward(self, meta: torch.Tensor) -> torch.Tensor:
        expert_out = self.experts(self.feature_gates(meta[self.owner]))  # [E, B, D']
        gate_input = meta[self.gate_input]  # [T, B, D]
        gates = self.gates(gate_input)  # [T, B, E]
        self.last_gate_weights = gates.detach()
        return mix_experts(gates, expert_out) + self._self_gated(gate_input, expert_out)

    def _self_gated(self, gate_input: torch.Tensor, expert_out: torch.Tensor) -> torch.Tensor:
        """Residual: each task's mixture of its own experts, [T, B, D']."""
        num_tasks, j = self.self_weight.shape[0], self.task_experts
        logits = torch.baddbmm(self.self_bias, gate_input, self.self_weight)  # [T, B, j]
        weights = torch.sigmoid(logits) if j == 1 else torch.softmax(logits, dim=-1)
        own = expert_out[-num_tasks * j :]  # [T*j, B, D']
        own = own.view(num_tasks, j, *own.shape[1:])
        return torch.einsum("tbj,tjbd->tbd", weights, own)


def task_groups(options: HoMEOptions, num_tasks: int, arch: str) -> torch.Tensor:
    """Group index of every task [T]; the groups must cover tasks 0..T-1 exactly once."""
    groups = options.task_groups or [list(range(num_tasks))]
    covered = sorted(task for group in groups for task in group)
    if covered != list(range(num_tasks)):
        raise ConfigError(
            f"model.options ({arch}): task_groups must hold each task index 0..{num_tasks - 1} "
            f"exactly once (got {groups})"
        )
    group_of = torch.empty(num_tasks, dtype=torch.long)
    for group, tasks in enumerate(groups):
        group_of[tasks] = group
    return group_of


@ARCHS.register("home")
class HoME(SharingArch):
    """Meta level (shared and group experts, gated per group) then task level (shared, group
    and task experts, gated per task, plus a self-gated residual).

    ``last_gate_weights`` is the task level's gates [T, B, E] over its pool [shared, group
    experts, task experts]; :attr:`meta_gate_weights` holds the meta level's [1+G, B, E].
    Options are documented on :class:`HoMEOptions`; ``spec.num_experts`` is not used.
    """

    Options = HoMEOptions

    def __init__(self, in_dim: int, num_tasks: int, spec: ModelSpec) -> None:
        super().__init__(in_dim, num_tasks, spec)
        options: HoMEOptions = self.options  # type: ignore[assignment]
        group_of = task_groups(options, num_tasks, spec.arch)
        self.meta = MetaLevel(in_dim, int(group_of.max()) + 1, spec, options)
        self.task = TaskLevel(spec.hidden[-1], group_of, spec, options)

    @property
    def last_gate_weights(self) -> torch.Tensor | None:
        """Task-level gates [T, B, E] from the most recent forward pass (detached)."""
        return self.task.last_gate_weights

    @property
    def meta_gate_weights(self) -> torch.Tensor | None:
        """Meta-level gates [1+G, B, E]: row 0 the shared gate, row 1+g group g's."""
        return self.meta.last_gate_weights

    @classmethod
    def unused_spec_fields(cls, spec: ModelSpec) -> list[str]:
        return ["num_experts"]  # the options size the shared, group and task experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.task(self.meta(x))
