"""CGC and PLE (Tang et al., RecSys 2020): task-specific plus shared experts, gated per task,
stacked in one (CGC) or several (PLE) extraction levels."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from polytask.arch.base import ARCHS, ArchOptions, SharingArch
from polytask.config import ModelSpec
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import MaskedGates, mix_experts


class PLEOptions(ArchOptions):
    task_experts: int = Field(1, ge=1, description="experts owned by each task, per level")
    shared_experts: int = Field(1, ge=1, description="experts shared by all tasks, per level")
    levels: int = Field(2, ge=1, description="extraction levels (CGC is one)")


class CGCOptions(PLEOptions):
    levels: int = Field(1, ge=1, le=1, description="CGC is a single extraction level")


class ExtractionLevel(nn.Module):
    """One level: T*k task experts and s shared experts in one fused bank.

    The pool is laid out [task 0 experts, ..., task T-1 experts, shared experts]. Task t's gate
    may weight its own k experts and the shared ones; the shared gate (on every level but the
    last) may weight all. At the first level every expert reads the same input (one product);
    at later levels task experts read their task's representation and shared experts the shared
    one, gathered into one batched input.

    Shapes: x [B, in] (first level) or [T+1, B, in] -> [T+1, B, out] (or [T, B, out] if last).
    """

    def __init__(
        self,
        num_tasks: int,
        in_dim: int,
        spec: ModelSpec,
        options: PLEOptions,
        first: bool,
        last: bool,
    ) -> None:
        super().__init__()
        k, s = options.task_experts, options.shared_experts
        num_experts = num_tasks * k + s
        self.first, self.last = first, last
        self.experts = ExpertBank(num_experts, in_dim, spec.hidden, dropout=spec.dropout)
        owner = torch.cat(
            [torch.arange(num_tasks).repeat_interleave(k), torch.full((s,), num_tasks)]
        )
        self.register_buffer("owner", owner)  # which representation each expert reads
        allowed = torch.zeros(num_tasks + (0 if last else 1), num_experts, dtype=torch.bool)
        for task in range(num_tasks):
            allowed[task, task * k : (task + 1) * k] = True
            allowed[task, num_tasks * k :] = True
        if not last:
            allowed[num_tasks] = True
        self.gates = MaskedGates(allowed, in_dim, per_gate_input=not first)
        self.last_gate_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expert_out = self.experts(x if self.first else x[self.owner])  # [E, B, out]
        gate_input = x if self.first else x[: self.gates.num_gates]
        gates = self.gates(gate_input)  # [G, B, E]
        self.last_gate_weights = gates.detach()
        return mix_experts(gates, expert_out)


@ARCHS.register("ple")
class PLE(SharingArch):
    """Progressive layered extraction: ``levels`` CGC levels, the last without a shared gate."""

    Options = PLEOptions

    def __init__(self, in_dim: int, num_tasks: int, spec: ModelSpec) -> None:
        super().__init__(in_dim, num_tasks, spec)
        options: PLEOptions = self.options  # type: ignore[assignment]
        dims = [in_dim] + [spec.hidden[-1]] * (options.levels - 1)
        self.levels = nn.ModuleList(
            ExtractionLevel(
                num_tasks, dim, spec, options, first=i == 0, last=i == options.levels - 1
            )
            for i, dim in enumerate(dims)
        )

    @property
    def last_gate_weights(self) -> torch.Tensor | None:
        """Task gates of the last level [T, B, E] over [task experts..., shared experts]."""
        return self.levels[-1].last_gate_weights

    @classmethod
    def unused_spec_fields(cls, spec: ModelSpec) -> list[str]:
        return ["num_experts"]  # options.task_experts and shared_experts size the levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for level in self.levels:
            x = level(x)
        return x


@ARCHS.register("cgc")
class CGC(PLE):
    """Customized gate control: PLE with a single extraction level."""

    Options = CGCOptions
