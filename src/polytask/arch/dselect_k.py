"""DSelect-k (Hazimeh et al., NeurIPS 2021): a differentiable gate that selects at most k of
E shared experts per task (the gate itself is :mod:`polytask.nn.dselect`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from polytask.arch.base import ARCHS, Architecture, ArchOptions
from polytask.config import ModelSpec
from polytask.plan.schema import DSelectGates, Level, MLPExperts, Plan, full


class DSelectKOptions(ArchOptions):
    k: int = Field(2, ge=1, description="selectors per task: at most k experts get weight")
    gamma: float = Field(
        1.0, gt=0.0, description="width of the smooth-step's cubic region; smaller saturates"
    )
    entropy_reg: float = Field(
        0.0, ge=0.0, description="weight of the selectors' entropy penalty (pushes to one-hot)"
    )
    per_example: bool = Field(
        False, description="gate logits from a linear map of each input row instead of static"
    )


@ARCHS.register("dselect_k")
class DSelectK(Architecture):
    """DSelect-k (Hazimeh et al. 2021): ``model.num_experts`` shared experts, each task's
    mixture selecting at most k of them through differentiable binary selectors."""

    Options = DSelectKOptions
    uses = frozenset({"hidden", "num_experts", "dropout"})

    @classmethod
    def build(cls, num_tasks: int, spec: ModelSpec, options: BaseModel) -> Plan:
        assert isinstance(options, DSelectKOptions)
        count = spec.num_experts
        gates = DSelectGates(allowed=[full(count)] * num_tasks, **options.model_dump())
        experts = MLPExperts(
            count=count, hidden=spec.hidden, dropout=spec.dropout, owners=["shared"] * count
        )
        return Plan(
            levels=[Level(experts=experts, gates=gates)],
            task_gates=full(num_tasks),
            source="dselect_k",
        )
