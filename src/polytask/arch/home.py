"""HoME (Wang et al., "HoME: Hierarchy of Multi-Gate Experts for Multi-Task Learning at
Kuaishou", 2024): a two-level expert hierarchy, tasks -> task groups -> all tasks.

The paper fixes three failure modes of MMoE-style models, each with one mechanism:

* expert collapse: every expert layer is ``linear -> per-expert normalisation -> Swish``
  (normed experts, :mod:`polytask.nn.normed`);
* expert degradation (a shared expert taken over by one task): a hierarchy mask. A meta level
  gates shared and per-group experts per task group; a task level then gates shared, group
  and task experts per task, each reading the meta representation it belongs to;
* expert underfitting (sparse tasks ignoring their own experts): per-expert feature gates,
  and a self gate adding a residual mixture of each task's own experts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, NonNegativeInt, field_validator

from polytask.arch.base import ARCHS, Architecture, ArchOptions
from polytask.config import ModelSpec
from polytask.errors import ConfigError
from polytask.plan.schema import Level, NormedExperts, Plan, SoftmaxGates, full


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
    expert_norm: Literal["batch", "layer"] = Field(
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


def group_of_tasks(options: HoMEOptions, num_tasks: int, arch: str) -> list[int]:
    """Group index of every task; the groups must cover tasks 0..T-1 exactly once."""
    groups = options.task_groups or [list(range(num_tasks))]
    covered = sorted(task for group in groups for task in group)
    if covered != list(range(num_tasks)):
        raise ConfigError(
            f"model.options ({arch}): task_groups must hold each task index 0..{num_tasks - 1} "
            f"exactly once (got {groups})"
        )
    group_of = [0] * num_tasks
    for group, tasks in enumerate(groups):
        for task in tasks:
            group_of[task] = group
    return group_of


def _experts(
    owners: list[str], spec: ModelSpec, options: HoMEOptions, reads: list[int] | None = None
) -> NormedExperts:
    return NormedExperts(
        count=len(owners),
        hidden=spec.hidden,
        dropout=spec.dropout,
        norm=options.expert_norm,
        feature_gate_rank=options.feature_gate_rank,
        owners=owners,
        reads=reads,
    )


@ARCHS.register("home")
class HoME(Architecture):
    """HoME (Kuaishou 2024): a meta level of shared and per-group experts gated per task
    group, then a task level of shared, group and task experts gated per task, with
    normalised experts, feature gates and self gates; ``model.num_experts`` is not used."""

    Options = HoMEOptions

    @classmethod
    def build(cls, num_tasks: int, spec: ModelSpec, options: BaseModel) -> Plan:
        assert isinstance(options, HoMEOptions)
        group_of = group_of_tasks(options, num_tasks, spec.arch)
        num_groups = max(group_of) + 1
        s, k, j = options.shared_experts, options.group_experts, options.task_experts
        return Plan(
            levels=[
                cls._meta(num_groups, s, k, spec, options),
                cls._task(group_of, num_groups, s, k, j, spec, options),
            ],
            task_gates=full(num_tasks),
            source="home",
        )

    @staticmethod
    def _meta(num_groups: int, s: int, k: int, spec: ModelSpec, options: HoMEOptions) -> Level:
        """Pool [shared..., group 0..., group G-1...], all reading the input. Gate 0 (the
        shared representation) weights the whole pool; gate 1+g (group g) weights the shared
        experts and group g's own."""
        owners = ["shared"] * s + [f"group:{g}" for g in range(num_groups) for _ in range(k)]
        allowed = [full(s + num_groups * k)]
        allowed += [full(s) + list(range(s + g * k, s + (g + 1) * k)) for g in range(num_groups)]
        return Level(
            experts=_experts(owners, spec, options),
            gates=SoftmaxGates(allowed=allowed),
            name="meta",
        )

    @staticmethod
    def _task(
        group_of: list[int],
        num_groups: int,
        s: int,
        k: int,
        j: int,
        spec: ModelSpec,
        options: HoMEOptions,
    ) -> Level:
        """Pool [shared..., group experts (by group)..., task experts (by task)...]. Shared
        experts read the meta shared output (0), group and task experts their group's
        (1 + g); task t's gate reads its group's output and weights the shared experts, its
        group's and its own, whose self gate adds their residual mixture."""
        num_tasks = len(group_of)
        owners = ["shared"] * s + [f"group:{g}" for g in range(num_groups) for _ in range(k)]
        owners += [f"task:{t}" for t in range(num_tasks) for _ in range(j)]
        reads = [0] * s + [1 + g for g in range(num_groups) for _ in range(k)]
        reads += [1 + group_of[t] for t in range(num_tasks) for _ in range(j)]
        first_own = s + num_groups * k
        own = [list(range(first_own + t * j, first_own + (t + 1) * j)) for t in range(num_tasks)]
        allowed = [
            full(s) + list(range(s + group * k, s + (group + 1) * k)) + own[task]
            for task, group in enumerate(group_of)
        ]
        return Level(
            experts=_experts(owners, spec, options, reads),
            gates=SoftmaxGates(allowed=allowed, reads=[1 + g for g in group_of]),
            self_gates=own,
            name="task",
        )
