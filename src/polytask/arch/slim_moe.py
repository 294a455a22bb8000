"""A gated mixture of experts described level by level: what ``polytask slim`` saves.

MMoE, OMoE, CGC, PLE, HoME and DSelect-k all compute the same thing at each level: a pool of
experts, some gates that weight (a subset of) the pool, and one mixture per gate. What differs
is how the pool and the gates are laid out, which each of those classes fixes with a few
counts (``num_experts``, ``task_experts``, ...). A pruned model no longer has such a regular
layout (task 0 may keep two of its experts and the shared gate one), so this architecture
takes the layout itself as its options: per level the experts, which representation of the
level below each expert and each gate reads, and which experts each gate may weight. Any of
those architectures can be written as a ``slim_moe`` with the same weights (see
:mod:`polytask.slim.extract`), and pruning then only removes rows of these lists.

The saved ``config.yaml`` therefore describes the slim model completely, and a slim run
directory loads through :func:`polytask.load` like any other run.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator
from torch import nn

from polytask.arch.base import ARCHS, ArchOptions, SharingArch
from polytask.arch.dselect_k import DSelectKGates, DSelectKOptions
from polytask.arch.home import FeatureGates, NormedExperts
from polytask.config import ModelSpec
from polytask.errors import ConfigError
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import MaskedGates, SoftmaxGates, mix_experts

GateKind = Literal["softmax", "masked", "static", "dselect"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DSelectSource(_Strict):
    """A per-example DSelect-k gate over its original pool, read at ``columns`` only."""

    source_experts: int = Field(ge=1, description="size of the pool the gate was trained on")
    columns: list[NonNegativeInt] = Field(description="pool index of each kept expert")
    k: int = Field(ge=1)
    gamma: float = Field(gt=0.0)


class SlimGates(_Strict):
    """The gates of one level.

    ``kind``: ``softmax`` (one linear-softmax over every expert, as MMoE/OMoE), ``masked``
    (softmax over each gate's ``allowed`` experts, as CGC/PLE/HoME), ``static`` (a fixed
    weight table, renormalised over the kept experts: DSelect-k with static gating) or
    ``dselect`` (per-example DSelect-k, renormalised over the kept experts).
    """

    kind: GateKind
    allowed: list[list[NonNegativeInt]] = Field(
        min_length=1, description="per gate, the experts of this level it may weight"
    )
    inputs: list[NonNegativeInt] | None = Field(
        None, description="levels after the first: which representation below each gate reads"
    )
    dselect: DSelectSource | None = None


class SlimLevel(_Strict):
    """One level: its experts (their index in the source architecture, for the record), what
    each reads, its gates and, for HoME's task level, each gate's self-gated own experts."""

    experts: list[NonNegativeInt] = Field(min_length=1)
    owner: list[NonNegativeInt] | None = Field(
        None, description="levels after the first: which representation below each expert reads"
    )
    gates: SlimGates
    self_gates: list[list[NonNegativeInt]] | None = None


class SlimMoEOptions(ArchOptions):
    source: str = Field(description="the architecture this model was cut from")
    expert: Literal["mlp", "normed"] = Field(
        "mlp", description="'mlp' (ReLU expert banks) or 'normed' (HoME's normalised experts)"
    )
    expert_norm: Literal["batch", "layer"] = Field(
        "batch", description="normed experts: HoME's per-expert normalisation"
    )
    feature_gate_rank: int = Field(0, ge=0, description="HoME's feature gates (0: none)")
    levels: list[SlimLevel] = Field(
        min_length=1, description="per level: experts, what they read, gates (see SlimLevel)"
    )
    task_gates: list[NonNegativeInt] = Field(
        min_length=1, description="which gate of the last level each task reads"
    )

    @model_validator(mode="after")
    def _consistent_layout(self) -> SlimMoEOptions:
        below: int | None = None  # representations the previous level produces
        for number, level in enumerate(self.levels):
            where = f"levels[{number}]"
            gates, experts = level.gates, len(level.experts)
            for index, allowed in enumerate(gates.allowed):
                if not allowed or max(allowed) >= experts:
                    raise ValueError(
                        f"{where}: gate {index} must allow experts in 0..{experts - 1}"
                    )
                if gates.kind == "softmax" and sorted(allowed) != list(range(experts)):
                    raise ValueError(f"{where}: a softmax gate weights every expert of its level")
            if (gates.kind == "dselect") != (gates.dselect is not None):
                raise ValueError(f"{where}: 'dselect' settings go with gate kind 'dselect' only")
            if gates.dselect is not None and len(gates.dselect.columns) != experts:
                raise ValueError(f"{where}: dselect.columns needs one entry per expert")
            if below is None:
                if level.owner is not None or gates.inputs is not None:
                    raise ValueError(f"{where}: the first level reads the input, no owner/inputs")
            else:
                for name, values, count in (
                    ("owner", level.owner, experts),
                    ("gates.inputs", gates.inputs, len(gates.allowed)),
                ):
                    if values is None or len(values) != count or max(values) >= below:
                        raise ValueError(f"{where}: {name} needs {count} indices in 0..{below - 1}")
            if level.self_gates is not None:
                sizes = {len(own) for own in level.self_gates}
                if len(level.self_gates) != len(gates.allowed) or len(sizes) != 1 or 0 in sizes:
                    raise ValueError(f"{where}: self_gates needs one equally long list per gate")
                if max(max(own) for own in level.self_gates) >= experts:
                    raise ValueError(f"{where}: self_gates index out of range")
            below = len(gates.allowed)
        if below is not None and max(self.task_gates) >= below:
            raise ValueError(f"task_gates: indices must be in 0..{below - 1}")
        return self


class StaticGates(nn.Module):
    """Fixed expert weights per gate (non-negative), renormalised to sum to 1.

    DSelect-k with static gating gives every row the same weights in eval; after experts are
    dropped, dividing by the kept weights' sum is the renormalisation over kept experts.

    Shapes: x [B, ...] -> weights [G, B, E].
    """

    def __init__(self, num_gates: int, num_experts: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.full((num_gates, num_experts), 1.0 / num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.table / self.table.sum(-1, keepdim=True)
        return weights.unsqueeze(1).expand(-1, x.shape[-2], -1)


class SelectedDSelectK(nn.Module):
    """A per-example DSelect-k gate over its source pool, read at the kept columns and
    renormalised (its binary-code parametrisation cannot drop experts itself).

    Shapes: x [B, in] -> weights [G, B, E_kept].
    """

    def __init__(self, num_gates: int, in_dim: int, source: DSelectSource) -> None:
        super().__init__()
        options = DSelectKOptions(k=source.k, gamma=source.gamma, per_example=True)
        self.gates = DSelectKGates(num_gates, in_dim, source.source_experts, options)
        self.register_buffer("columns", torch.tensor(source.columns), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, _ = self.gates(x)
        kept = weights[..., self.columns]
        return kept / kept.sum(-1, keepdim=True).clamp(min=torch.finfo(kept.dtype).tiny)


class SlimLevelModule(nn.Module):
    """One level: experts (optionally behind feature gates), gates, mixtures, self gates.

    Shapes: x [B, in] (first level) or [R, B, in] -> [G, B, out], G gates.
    """

    def __init__(
        self,
        in_dim: int,
        level: SlimLevel,
        spec: ModelSpec,
        options: SlimMoEOptions,
        first: bool,
    ) -> None:
        super().__init__()
        experts, gates = len(level.experts), level.gates
        num_gates = len(gates.allowed)
        self.first = first
        self.feature_gates: nn.Module = nn.Identity()
        self.experts: nn.Module
        if options.expert == "normed":
            if options.feature_gate_rank > 0:
                self.feature_gates = FeatureGates(experts, in_dim, options.feature_gate_rank)
            self.experts = NormedExperts(
                experts, in_dim, spec.hidden, options.expert_norm, spec.dropout
            )
        else:
            self.experts = ExpertBank(experts, in_dim, spec.hidden, dropout=spec.dropout)
        if not first:
            assert level.owner is not None and gates.inputs is not None
            self.register_buffer("owner", torch.tensor(level.owner), persistent=False)
            self.register_buffer("inputs", torch.tensor(gates.inputs), persistent=False)
        self.gates: nn.Module
        if gates.kind == "softmax":
            if not first:
                raise ConfigError("model.options (slim_moe): softmax gates belong to level 0")
            self.gates = SoftmaxGates(num_gates, in_dim, experts)
        elif gates.kind == "masked":
            allowed = torch.zeros(num_gates, experts, dtype=torch.bool)
            for index, members in enumerate(gates.allowed):
                allowed[index, members] = True
            self.gates = MaskedGates(allowed, in_dim, per_gate_input=not first)
        elif gates.kind == "static":
            self.gates = StaticGates(num_gates, experts)
        else:
            assert gates.dselect is not None
            if not first:
                raise ConfigError("model.options (slim_moe): dselect gates belong to level 0")
            self.gates = SelectedDSelectK(num_gates, in_dim, gates.dselect)
        self.self_weight: nn.Parameter | None = None
        self.self_bias: nn.Parameter | None = None
        if level.self_gates is not None:
            own = len(level.self_gates[0])
            self.register_buffer("own", torch.tensor(level.self_gates), persistent=False)
            self.self_weight = nn.Parameter(torch.zeros(num_gates, in_dim, own))
            self.self_bias = nn.Parameter(torch.zeros(num_gates, 1, own))
        self.last_gate_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expert_out = self.experts(self.feature_gates(x if self.first else x[self.owner]))
        gate_input = x if self.first else x[self.inputs]
        gates = self.gates(gate_input)  # [G, B, E]
        self.last_gate_weights = gates.detach()
        mixed = mix_experts(gates, expert_out)
        if self.self_weight is None:
            return mixed
        return mixed + self._self_gated(gate_input, expert_out)

    def _self_gated(self, gate_input: torch.Tensor, expert_out: torch.Tensor) -> torch.Tensor:
        """HoME's residual: each gate's mixture of its own experts, [G, B, out]."""
        assert self.self_weight is not None and self.self_bias is not None
        logits = torch.baddbmm(self.self_bias, gate_input, self.self_weight)  # [G, B, j]
        own = self.own.shape[1]
        weights = torch.sigmoid(logits) if own == 1 else torch.softmax(logits, dim=-1)
        return torch.einsum("gbj,gjbd->gbd", weights, expert_out[self.own])


@ARCHS.register("slim_moe")
class SlimMoE(SharingArch):
    """A gated mixture of experts laid out level by level (what `polytask slim` saves for
    mmoe, omoe, cgc, ple, home and dselect_k).

    Each level mixes its experts once per gate; the next level's experts and gates read those
    mixtures (``owner``, ``gates.inputs``), and task t reads gate ``task_gates[t]`` of the last
    level. ``spec.num_experts`` is not used: the levels list the experts.

    Shapes: x [B, in_dim] -> [T, B, hidden[-1]].
    """

    Options = SlimMoEOptions
    options: SlimMoEOptions

    def __init__(self, in_dim: int, num_tasks: int, spec: ModelSpec) -> None:
        super().__init__(in_dim, num_tasks, spec)
        options = self.options
        if len(options.task_gates) != num_tasks:
            raise ConfigError(
                f"model.options ({spec.arch}): task_gates names {len(options.task_gates)} "
                f"gate(s) for {num_tasks} task(s)"
            )
        dims = [in_dim] + [spec.hidden[-1]] * (len(options.levels) - 1)
        self.levels = nn.ModuleList(
            SlimLevelModule(dim, level, spec, options, first=index == 0)
            for index, (dim, level) in enumerate(zip(dims, options.levels, strict=True))
        )
        self.register_buffer("task_gates", torch.tensor(options.task_gates), persistent=False)
        self.identity_gates = options.task_gates == list(range(num_tasks))

    @property
    def last_gate_weights(self) -> torch.Tensor | None:
        """Each task's gate weights over the last level's experts [T, B, E] (detached)."""
        weights = self.levels[-1].last_gate_weights
        if weights is None or self.identity_gates:
            return weights
        return weights[self.task_gates]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for level in self.levels:
            x = level(x)
        return x if self.identity_gates else x[self.task_gates]

    def extra_repr(self) -> str:
        counts = [len(level.experts) for level in self.options.levels]
        return f"source={self.options.source}, experts per level={counts}"
