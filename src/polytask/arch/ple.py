"""CGC and PLE (Tang et al., RecSys 2020): task-specific plus shared experts, gated per task,
stacked in one (CGC) or several (PLE) extraction levels."""

from __future__ import annotations

from pydantic import BaseModel, Field

from polytask.arch.base import ARCHS, Architecture, ArchOptions
from polytask.config import ModelSpec
from polytask.plan.schema import Level, MLPExperts, Plan, SoftmaxGates, full


class PLEOptions(ArchOptions):
    task_experts: int = Field(1, ge=1, description="experts owned by each task, per level")
    shared_experts: int = Field(1, ge=1, description="experts shared by all tasks, per level")
    levels: int = Field(2, ge=1, description="extraction levels (CGC is one)")


class CGCOptions(PLEOptions):
    levels: int = Field(1, ge=1, le=1, description="CGC is a single extraction level")


def extraction_level(num_tasks: int, spec: ModelSpec, options: PLEOptions, number: int) -> Level:
    """One level: T*k task experts then s shared experts.

    Task t's gate weights its own k experts and the shared ones; every level but the last
    also has a shared gate over all experts, whose output the next level's shared experts
    and shared gate read. After the first level, task experts read their task's output of
    the level below and shared experts the shared output (index T).
    """
    k, s = options.task_experts, options.shared_experts
    last = number == options.levels - 1
    owners = [f"task:{t}" for t in range(num_tasks) for _ in range(k)] + ["shared"] * s
    shared = list(range(num_tasks * k, num_tasks * k + s))
    allowed = [list(range(t * k, (t + 1) * k)) + shared for t in range(num_tasks)]
    if not last:
        allowed.append(full(num_tasks * k + s))
    first = number == 0
    reads = None if first else [t for t in range(num_tasks) for _ in range(k)] + [num_tasks] * s
    return Level(
        experts=MLPExperts(
            count=num_tasks * k + s,
            hidden=spec.hidden,
            dropout=spec.dropout,
            reads=reads,
            owners=owners,
        ),
        gates=SoftmaxGates(allowed=allowed, reads=None if first else full(len(allowed))),
        name=f"extraction {number}",
    )


@ARCHS.register("ple")
class PLE(Architecture):
    """Progressive layered extraction (Tang et al. 2020): ``levels`` CGC levels of per-task
    and shared experts, the last without a shared gate; ``model.num_experts`` is not used."""

    Options = PLEOptions

    @classmethod
    def build(cls, num_tasks: int, spec: ModelSpec, options: BaseModel) -> Plan:
        assert isinstance(options, PLEOptions)
        levels = [extraction_level(num_tasks, spec, options, n) for n in range(options.levels)]
        return Plan(levels=levels, task_gates=full(num_tasks), source=spec.arch)


@ARCHS.register("cgc")
class CGC(PLE):
    """Customized gate control (Tang et al. 2020): PLE with a single extraction level."""

    Options = CGCOptions
