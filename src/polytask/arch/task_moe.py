"""Task-level sparse mixture of experts: each task routes to its top-k of E shared experts
(routing and its auxiliary terms: :mod:`polytask.nn.topk`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from polytask.arch.base import ARCHS, Architecture, ArchOptions
from polytask.config import ModelSpec
from polytask.errors import ConfigError
from polytask.plan.schema import Level, MLPExperts, Plan, TopKGates, full


class TaskMoEOptions(ArchOptions):
    top_k: int = Field(2, ge=1, description="experts each task (or each row of a task) uses")
    routing: Literal["task", "row"] = Field(
        "task", description="'task': route on the task only; 'row': route each row"
    )
    noise: float = Field(
        1.0, ge=0.0, description="std of the Gaussian noise on router logits in training"
    )
    balance_weight: float = Field(0.01, ge=0.0, description="weight of the load-balancing loss")
    mi_weight: float = Field(
        0.01, ge=0.0, description="weight of the task-expert mutual information (maximised)"
    )


@ARCHS.register("task_moe")
class TaskMoE(Architecture):
    """Task-level sparse MoE: each task routes to its top-k of ``model.num_experts`` experts
    (by task or per row), with load-balancing and task-expert mutual-information terms; only
    routed experts run on a row."""

    Options = TaskMoEOptions
    uses = frozenset({"hidden", "num_experts", "dropout"})

    @classmethod
    def parse_options(cls, spec: ModelSpec) -> BaseModel:
        """Also check ``top_k`` against ``model.num_experts``, so a config fails on load."""
        options = super().parse_options(spec)
        assert isinstance(options, TaskMoEOptions)
        if options.top_k > spec.num_experts:
            raise ConfigError(
                f"model.options ({spec.arch}): top_k: {options.top_k} is more than "
                f"model.num_experts ({spec.num_experts})"
            )
        return options

    @classmethod
    def build(cls, num_tasks: int, spec: ModelSpec, options: BaseModel) -> Plan:
        assert isinstance(options, TaskMoEOptions)
        count = spec.num_experts
        experts = MLPExperts(
            count=count, hidden=spec.hidden, dropout=spec.dropout, owners=["shared"] * count
        )
        gates = TopKGates(allowed=[full(count)] * num_tasks, **options.model_dump())
        return Plan(
            levels=[Level(experts=experts, gates=gates)],
            task_gates=full(num_tasks),
            source="task_moe",
        )
