"""Single-task baselines: one independent network per task, nothing shared."""

from __future__ import annotations

from pydantic import BaseModel

from polytask.arch.base import ARCHS, Architecture
from polytask.config import ModelSpec
from polytask.plan.schema import IdentityGates, Level, MLPExperts, Plan, full


@ARCHS.register("single")
class SingleTask(Architecture):
    """One independent network per task, encoder included: the single-task baseline.

    Parameters are disjoint and the total loss is a sum, so each task's network gets exactly
    the gradient of its own loss: the same as training T models one by one, computed as
    batched products in one pass.
    """

    @classmethod
    def build(cls, num_tasks: int, spec: ModelSpec, options: BaseModel) -> Plan:
        tasks = full(num_tasks)
        bottoms = MLPExperts(
            count=num_tasks,
            hidden=spec.hidden,
            dropout=spec.dropout,
            reads=tasks,
            owners=[f"task:{t}" for t in tasks],
        )
        return Plan(
            levels=[Level(experts=bottoms, gates=IdentityGates(allowed=[[t] for t in tasks]))],
            task_gates=tasks,
            encoders="per_task",
            source="single",
        )
