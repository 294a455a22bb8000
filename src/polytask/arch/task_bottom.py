"""Task-specific bottom representations, after DTRN (Bi et al., Kuaishou, CIKM 2023); the
bank of task views is :class:`~polytask.nn.task_bottom.TaskBottomBank`."""

from __future__ import annotations

from pydantic import BaseModel, Field

from polytask.arch.base import ARCHS, Architecture, ArchOptions
from polytask.config import ModelSpec
from polytask.plan.schema import IdentityGates, Level, Plan, TaskBottomExperts, full


class TaskBottomOptions(ArchOptions):
    se_hidden: int = Field(16, ge=1, description="hidden width of each task's feature gate")
    task_embedding_dim: int = Field(8, ge=1, description="width of the learned task embeddings")
    hyper_rank: int = Field(4, ge=1, description="rank r of each task's transform correction")
    transform_dim: int | None = Field(
        None, ge=1, description="output width of the task transform (default: the input width)"
    )


@ARCHS.register("task_bottom")
class TaskBottom(Architecture):
    """Task-specific bottoms (after DTRN, 2023): per-task squeeze-excitation feature gates,
    a shared transform with hypernetwork-generated low-rank per-task corrections, then a
    shared MLP (``model.hidden``)."""

    Options = TaskBottomOptions

    @classmethod
    def build(cls, num_tasks: int, spec: ModelSpec, options: BaseModel) -> Plan:
        assert isinstance(options, TaskBottomOptions)
        tasks = full(num_tasks)
        views = TaskBottomExperts(
            count=num_tasks,
            hidden=spec.hidden,
            dropout=spec.dropout,
            owners=[f"task:{t}" for t in tasks],
            **options.model_dump(),
        )
        return Plan(
            levels=[Level(experts=views, gates=IdentityGates(allowed=[[t] for t in tasks]))],
            task_gates=tasks,
            source="task_bottom",
        )
