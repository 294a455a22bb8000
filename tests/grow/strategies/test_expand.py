"""Expand's plan: k new experts at a top-k routed level unless told otherwise, one elsewhere."""

from __future__ import annotations

from polytask.grow.strategies.expand import Expand
from tests.arch.helpers import plan_of


def test_expand_adds_k_experts_at_a_top_k_level_by_default():
    plan = plan_of("task_moe", 2, num_experts=3, options={"top_k": 2})
    grown = Expand.from_options({}).grow_plan(plan, 1)
    assert grown.levels[0].experts.count == 5 and grown.levels[0].experts.blocks == [3, 2]
    assert grown.levels[0].gates.allowed[2] == [0, 1, 2, 3, 4]
    mmoe = Expand.from_options({}).grow_plan(plan_of("mmoe", 2, num_experts=3), 1)
    assert mmoe.levels[0].experts.count == 4
