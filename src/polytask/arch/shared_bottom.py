"""Shared-bottom (hard parameter sharing): one network under every task's tower."""

from __future__ import annotations

from pydantic import BaseModel

from polytask.arch.base import ARCHS, Architecture
from polytask.config import ModelSpec
from polytask.plan.schema import IdentityGates, Level, MLPExperts, Plan


@ARCHS.register("shared_bottom")
class SharedBottom(Architecture):
    """Hard sharing: one bottom MLP (``model.hidden``) whose output every task's tower reads."""

    @classmethod
    def build(cls, num_tasks: int, spec: ModelSpec, options: BaseModel) -> Plan:
        bottom = MLPExperts(count=1, hidden=spec.hidden, dropout=spec.dropout, owners=["shared"])
        return Plan(
            levels=[Level(experts=bottom, gates=IdentityGates(allowed=[[0]]))],
            task_gates=[0] * num_tasks,
            balance_at="output",
            source="shared_bottom",
        )
