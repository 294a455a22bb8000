"""Expansion: new experts at every level, a new gate and a new tower for each new task;
every old parameter fixed. The old tasks' outputs stay bit-identical (the new parts are
blocks of their own, :mod:`polytask.nn.blocks`), so nothing is forgotten, and the new task
still reads the old shared experts through its gate."""

from __future__ import annotations

from typing import Literal

import torch
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
from polytask.model import MultiTaskModel
from polytask.nn.blocks import parts
from polytask.nn.experts import ExpertBank
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
    init: Literal["fresh", "copy"] = Field(
        "fresh",
        description="the new experts' starting weights: fresh, or a copy of the level's most "
        "recently added experts (a warm start: forward transfer where the tasks share what "
        "their inputs mean; the copies train, the originals stay fixed)",
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

    def initialise(self, grown: MultiTaskModel, base: MultiTaskModel) -> None:
        assert isinstance(self.options, ExpandOptions)
        if self.options.init == "copy":
            copy_latest_experts(grown, base)


def copy_latest_experts(grown: MultiTaskModel, base: MultiTaskModel) -> None:
    """Start every expert block growth added to a level as a copy of the level's last old
    block (expert i of a new block from expert i mod E of the old one), where their
    experts have one shape; blocks of another shape keep their fresh weights."""
    levels = zip(grown.arch.level_modules, base.arch.level_modules, strict=True)
    for new_level, old_level in levels:
        old_blocks = parts(old_level.experts)
        source = old_blocks[-1]
        for block in parts(new_level.experts)[len(old_blocks) :]:
            if isinstance(block, ExpertBank) and isinstance(source, ExpertBank):
                copy_experts(block, source)


def copy_experts(target: ExpertBank, source: ExpertBank) -> None:
    """``target``'s expert i := ``source``'s expert i mod E, when one expert's shapes match."""
    pairs = [*zip(target.weights, source.weights, strict=False)]
    pairs += [*zip(target.biases, source.biases, strict=False)]
    shapes_match = len(target.weights) == len(source.weights) and all(
        new.shape[1:] == old.shape[1:] for new, old in pairs
    )
    if not shapes_match:
        return
    index = torch.arange(target.num_experts) % source.num_experts
    with torch.no_grad():
        for new, old in pairs:
            new.copy_(old[index])


def default_experts(plan: Plan) -> int:
    """New experts per level when none are asked for: k at a top-k routed level, else 1."""
    ks = [getattr(level.gates, "top_k", None) for level in plan.levels]
    return max([k for k in ks if k is not None], default=1)
