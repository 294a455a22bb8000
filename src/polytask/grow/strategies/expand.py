"""Expansion: new experts at every level, a new gate and a new tower for each new task;
every old parameter fixed. The old tasks' outputs stay bit-identical (the new parts are
blocks of their own, :mod:`polytask.nn.blocks`), so nothing is forgotten, and the new task
still reads the old shared experts through its gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from polytask.arch import ARCHS
from polytask.config import ModelSpec
from polytask.errors import PolytaskError
from polytask.grow.strategies.base import (
    STRATEGIES,
    ExperienceContext,
    Strategy,
    StrategyOptions,
)
from polytask.plan.grow import add_tasks, growth_problem
from polytask.plan.schema import Plan


def growable_archs() -> list[str]:
    """The listed architectures whose plans expansion can grow."""
    names = []
    for name in ARCHS.names():
        cls = ARCHS.get(name)
        if cls.listed and growth_problem(cls.plan(2, ModelSpec(arch=name))) is None:
            names.append(name)
    return names


class ExpandOptions(StrategyOptions):
    experts: int | None = Field(
        None,
        ge=0,
        description="new experts per level for each new task; default k where the gates route "
        "top-k (task_moe: the new task routes top-k over the old experts plus k new ones), "
        "else 1 (identity-gated levels, such as shared-bottom or single-task bottoms, take 0 "
        "or 1; 0 there reads the shared bottom)",
    )
    read: Literal["shared", "all"] = Field(
        "shared",
        description="the old experts a new task's gate may weight: the shared ones, or all",
    )


@STRATEGIES.register("expand")
class Expand(Strategy):
    """New experts, gate and tower per new task; every old parameter fixed (no forgetting)."""

    Options = ExpandOptions
    summary = "new experts, gate and tower per task; old parameters fixed (no forgetting)"

    def grow_plan(self, plan: Plan, count: int) -> Plan:
        assert isinstance(self.options, ExpandOptions)
        problem = growth_problem(plan)
        if problem is not None:
            raise PolytaskError(
                f"expand cannot grow this model ({plan.source or 'plan'}: {problem}); it grows "
                f"{', '.join(growable_archs())}"
            )
        experts = self.options.experts
        if experts is None:
            experts = default_experts(plan)
        return add_tasks(plan, count, experts=experts, read=self.options.read)

    def frozen(self, context: ExperienceContext) -> list[str]:
        return sorted(context.origins)


def default_experts(plan: Plan) -> int:
    """New experts per level when none are asked for: k at a top-k routed level, else 1."""
    ks = [getattr(level.gates, "top_k", None) for level in plan.levels]
    return max([k for k in ks if k is not None], default=1)
