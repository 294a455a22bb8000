"""OMoE (one-gate mixture of experts; the MMoE paper's baseline)."""

from __future__ import annotations

from pydantic import BaseModel

from polytask.arch.base import ARCHS, Architecture
from polytask.config import ModelSpec
from polytask.plan.schema import Level, MLPExperts, Plan, SoftmaxGates, full


@ARCHS.register("omoe")
class OMoE(Architecture):
    """One-gate MoE: ``model.num_experts`` shared experts mixed by a single softmax gate that
    every task reads."""

    uses = frozenset({"hidden", "num_experts", "dropout"})

    @classmethod
    def build(cls, num_tasks: int, spec: ModelSpec, options: BaseModel) -> Plan:
        count = spec.num_experts
        experts = MLPExperts(
            count=count, hidden=spec.hidden, dropout=spec.dropout, owners=["shared"] * count
        )
        return Plan(
            levels=[Level(experts=experts, gates=SoftmaxGates(allowed=[full(count)]))],
            task_gates=[0] * num_tasks,
            balance_at="experts",
            source="omoe",
        )
