"""Growing a plan: the old plan stays a prefix, the new task gets its path, blocks record
what growth added, and cutting a grown plan back keeps the blocks consistent."""

from __future__ import annotations

import pytest

from polytask.errors import PolytaskError
from polytask.plan.cut import cut_plan, needed
from polytask.plan.grow import add_tasks, growth_problem
from polytask.plan.schema import GateBlock, Plan
from tests.arch.helpers import plan_of


def test_mmoe_new_task_gates_over_shared_and_its_own_experts():
    plan = plan_of("mmoe", 2, num_experts=3)
    grown = add_tasks(plan, 1, experts=2)
    level = grown.levels[0]
    assert level.experts.count == 5 and level.experts.blocks == [3, 2]
    assert level.experts.owners == ["shared"] * 3 + ["task:2"] * 2
    assert level.gates.allowed == [[0, 1, 2], [0, 1, 2], [0, 1, 2, 3, 4]]
    assert level.gates.blocks == [GateBlock(count=2, experts=3), GateBlock(count=1, experts=5)]
    assert grown.task_gates == [0, 1, 2] and grown.tower_blocks == [2, 1]


def test_ple_new_task_follows_its_own_path_through_the_levels():
    plan = plan_of("ple", 2, options={"levels": 2, "task_experts": 1, "shared_experts": 1})
    grown = add_tasks(plan, 1, experts=1)
    first, second = grown.levels
    # level 0: experts t0, t1, shared, new; gates t0, t1, shared gate, new gate
    assert first.gates.allowed[3] == [2, 3]
    assert first.gates.allowed[2] == [0, 1, 2]  # the old shared gate does not see the new expert
    # level 1: the new expert and the new gate read the new task's gate below (index 3)
    assert second.experts.reads == [0, 1, 2, 3]
    assert second.gates.reads == [0, 1, 3]
    assert second.gates.allowed[2] == [2, 3]
    assert grown.task_gates == [0, 1, 2]


def test_shared_bottom_without_experts_reads_the_shared_bottom():
    grown = add_tasks(plan_of("shared_bottom", 2), 2, experts=0)
    assert grown.task_gates == [0, 0, 0, 0]
    assert grown.levels[0].gates.blocks is None and grown.levels[0].experts.blocks is None
    assert grown.tower_blocks == [2, 2]


def test_single_task_model_gets_its_own_encoder_and_bottom():
    grown = add_tasks(plan_of("single", 2), 1, experts=1)
    assert grown.levels[0].experts.reads == [0, 1, 2]  # encoder 2 is the new task's
    assert grown.levels[0].gates.allowed[2] == [2]


def test_growing_twice_keeps_each_growth_a_block():
    twice = add_tasks(add_tasks(plan_of("mmoe", 2, num_experts=2), 1, experts=1), 2, experts=1)
    level = twice.levels[0]
    assert level.experts.blocks == [2, 1, 2]
    assert [b.experts for b in level.gates.blocks] == [2, 3, 5]
    assert twice.tower_blocks == [2, 1, 2] and twice.task_gates == [0, 1, 2, 3, 4]
    assert level.gates.allowed[3] == [0, 1, 3]  # shared experts and its own, not task 2's


@pytest.mark.parametrize(
    ("arch", "experts", "message"),
    [
        ("home", 1, "normed experts"),
        ("dselect_k", 1, "dselect gates"),
        ("task_bottom", 1, "task_bottom experts"),
        ("aitm", 1, "transfer head"),
        ("single", 0, "needs a bottom of its own"),
        ("cross_stitch", 0, "no expert there is shared"),
        ("shared_bottom", 2, "at most 1 expert"),
    ],
)
def test_refusals_say_why(arch, experts, message):
    with pytest.raises(PolytaskError, match=message):
        add_tasks(plan_of(arch, 2), 1, experts=experts)


def test_growth_problem_is_none_for_growable_plans():
    for arch in ("mmoe", "omoe", "ple", "cgc", "task_moe", "shared_bottom", "esmm"):
        assert growth_problem(plan_of(arch, 2)) is None


def test_top_k_routes_the_new_task_over_old_and_new_experts():
    plan = plan_of("task_moe", 2, num_experts=3, options={"top_k": 2})
    grown = add_tasks(plan, 1, experts=2)
    assert grown.levels[0].gates.allowed[2] == [0, 1, 2, 3, 4]
    assert grown.levels[0].gates.blocks[1] == GateBlock(count=1, experts=5)


def test_blocks_are_validated():
    plan = add_tasks(plan_of("mmoe", 2, num_experts=3), 1, experts=2)
    raw = plan.model_dump()
    raw["levels"][0]["gates"]["blocks"] = [{"count": 2, "experts": 4}, {"count": 1, "experts": 5}]
    with pytest.raises(ValueError, match="boundaries"):
        Plan.model_validate(raw)
    raw = plan.model_dump()
    raw["tower_blocks"] = [2, 2]
    with pytest.raises(ValueError, match="tower_blocks"):
        Plan.model_validate(raw)


@pytest.mark.parametrize(("keep", "towers"), [([0], None), ([2], None), ([0, 2], [1, 1])])
def test_cutting_a_grown_plan_keeps_consistent_blocks(keep, towers):
    grown = add_tasks(plan_of("mmoe", 2, num_experts=3), 1, experts=2)
    cuts = needed(grown, keep, lambda level, gate, allowed: allowed)
    cut = cut_plan(grown, cuts, keep)
    assert cut.tower_blocks == towers
    level = cut.levels[0]
    if keep == [0, 2]:
        assert level.experts.blocks == [3, 2]
        assert [b.experts for b in level.gates.blocks] == [3, 5]
    else:
        assert level.gates.blocks is None


def test_replicate_makes_block_diagonal_copies_read_by_their_tasks():
    from polytask.plan.grow import replicate

    plan = add_tasks(plan_of("ple", 2, options={"levels": 2}), 1, experts=0)
    copies = replicate(plan, 2, [0, 1, 1])
    first, second = copies.levels
    assert first.experts.count == 2 * plan.levels[0].experts.count
    # copy 1's gates weight copy 1's experts only, each gate block over its copy's range
    count = plan.levels[0].experts.count
    gates = plan.levels[0].gates.count
    for members in first.gates.allowed[gates:]:
        assert min(members) >= count
    assert [b.start for b in first.gates.blocks] == [0, 0, count, count]
    # the second level's copy-1 experts read copy 1's outputs below
    assert second.experts.reads[len(plan.levels[1].experts.reads) :] == [
        r + gates for r in plan.levels[1].experts.reads
    ]
    last = plan.levels[1].gates.count
    assert copies.task_gates == [0, last + 1, last + 2]
    with pytest.raises(PolytaskError, match="one encoder per task"):
        replicate(plan_of("single", 2), 2, [0, 1])
