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


def _base_and_grown(init: str, arch: str = "mmoe", experts: int = 3):
    import torch

    from polytask.config import ModelSpec
    from polytask.grow.model import add_tasks_to_model
    from polytask.model import build_model
    from tests.grow.conftest import tiny_model

    torch.manual_seed(0)
    if arch == "shared_bottom":
        base = tiny_model([1, 1], hidden=[5, 4])
        spec = ModelSpec(
            arch="shared_bottom", hidden=[5, 4], tower_hidden=[], encoder={"name": "numeric"}
        )
    else:
        spec = ModelSpec(arch=arch, num_experts=experts, hidden=[6], tower_hidden=[3])
        base = build_model(spec, [4, 3], 2, [1, 1], ["a", "b"])
    strategy = Expand.from_options({"init": init, "experts": experts if arch == "mmoe" else 1})
    plan = strategy.grow_plan(base.plan, 1)
    grown = add_tasks_to_model(base, spec, plan, [1], ["c"], lambda: None)
    strategy.initialise(grown, base)
    return base, grown


def test_copy_starts_each_new_expert_as_the_levels_last_old_one():
    import torch

    from polytask.nn.blocks import parts

    for arch in ("mmoe", "shared_bottom"):
        base, grown = _base_and_grown("copy", arch)
        for new_level, old_level in zip(
            grown.arch.level_modules, base.arch.level_modules, strict=True
        ):
            old, new = parts(old_level.experts)[-1], parts(new_level.experts)[-1]
            assert new is not old
            for a, b in zip([*new.weights, *new.biases], [*old.weights, *old.biases], strict=True):
                index = torch.arange(a.shape[0]) % b.shape[0]
                assert torch.equal(a, b[index])  # a copy, equal value
                assert a.data_ptr() != b.data_ptr()  # not the same storage: the copy trains


def test_fresh_keeps_the_new_experts_initialisation():
    import torch

    from polytask.nn.blocks import parts

    base, grown = _base_and_grown("fresh")
    old = parts(base.arch.level_modules[0].experts)[-1]
    new = parts(grown.arch.level_modules[0].experts)[-1]
    assert not torch.equal(new.weights[0], old.weights[0])


def test_init_is_validated():
    import pytest

    from polytask.errors import ConfigError

    with pytest.raises(ConfigError, match="init"):
        Expand.from_options({"init": "warm"})
