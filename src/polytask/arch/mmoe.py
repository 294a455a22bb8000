"""MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task."""

from __future__ import annotations

from pydantic import BaseModel

from polytask.arch.base import ARCHS, Architecture
from polytask.config import ModelSpec
from polytask.plan.schema import Level, MLPExperts, Plan, SoftmaxGates, full


@ARCHS.register("mmoe")
class MMoE(Architecture):
    """Multi-gate MoE (Ma et al. 2018): ``model.num_experts`` shared experts; task t reads
    sum_e gate_t(x)_e * expert_e(x)."""

    uses = frozenset({"hidden", "num_experts", "dropout"})

    @classmethod
    def build(cls, num_tasks: int, spec: ModelSpec, options: BaseModel) -> Plan:
        count = spec.num_experts
        experts = MLPExperts(
            count=count, hidden=spec.hidden, dropout=spec.dropout, owners=["shared"] * count
        )
        gates = SoftmaxGates(allowed=[full(count)] * num_tasks)
        return Plan(
            levels=[Level(experts=experts, gates=gates)],
            task_gates=full(num_tasks),
            balance_at="experts",
            source="mmoe",
        )
