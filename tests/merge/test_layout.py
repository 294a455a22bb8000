"""Tagging every weight maps a task's sub-network back into its base, for every plan."""

from __future__ import annotations

import pytest
import torch

from polytask.arch import ARCHS
from polytask.config import ModelSpec
from polytask.errors import PolytaskError
from polytask.merge.layout import expand, floating_keys, run_layout, weights_hash
from polytask.model import build_model
from polytask.slim.extract import task_subnetwork

LISTED = [name for name in ARCHS.names() if ARCHS.get(name).listed]


def model_of(arch: str):
    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, hidden=[6, 3], num_experts=2, tower_hidden=[3], embedding_dim=2)
    return build_model(spec, [3, 4], 4, [1, 1, 1], ["a", "b", "c"]).eval()


def holdings(model, keep):
    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    cut, _ = task_subnetwork(model, keep)
    layout = run_layout(model, keep)
    return state, cut.state_dict(), layout


@pytest.mark.parametrize("arch", LISTED)
def test_a_cut_expands_back_to_its_base_and_holds_what_its_tasks_read(arch):
    model = model_of(arch)
    for keep in ([0], [0, 1], [2]):
        try:
            state, cut, layout = holdings(model, keep)
        except PolytaskError:  # a funnel's tasks must be a prefix of its chain
            assert model.plan.heads.kind != "plain"
            continue
        expanded, held = expand(state, cut, layout)
        for key in state:
            assert torch.equal(expanded[key], state[key]), key
        # every tower element of a kept task is held, and none of a dropped one
        tower = held["towers.output.weights.0"]
        for t in range(3):
            assert bool(tower[t].all()) == (t in keep), (arch, keep, t)
        assert layout.plan.num_tasks == len(keep)


def test_mmoe_experts_are_shared_and_each_gate_belongs_to_its_task():
    model = model_of("mmoe")
    held = [expand(*holdings(model, [t])[:2], holdings(model, [t])[2])[1] for t in range(3)]
    for t in range(3):
        assert bool(held[t]["arch.levels.0.experts.weights.0"].all())
        gate = held[t]["arch.levels.0.gates.weight"]
        assert [bool(gate[g].all()) for g in range(3)] == [g == t for g in range(3)]
        assert not any(bool(gate[g].any()) for g in range(3) if g != t)


def test_ple_last_level_task_experts_are_held_by_their_task_alone():
    """Below the last level every expert feeds the shared gate, which every task reads: the
    holdings follow what each task's output depends on, not the owner labels."""
    model = model_of("ple")
    plan = model.plan
    last = len(plan.levels) - 1
    for number, level in enumerate(plan.levels):
        key = f"arch.levels.{number}.experts.weights.0"
        for t in range(3):
            state, cut, layout = holdings(model, [t])
            held = expand(state, cut, layout)[1][key]
            for expert, owner in enumerate(level.experts.owners):
                reached = bool(held[expert].all())
                own = owner in ("shared", f"task:{t}")
                assert reached == own if number == last else reached, (number, expert, owner)


def test_the_weights_hash_changes_with_any_element():
    state = {k: v.clone() for k, v in model_of("mmoe").state_dict().items()}
    before = weights_hash(state)
    assert weights_hash({k: v.clone() for k, v in state.items()}) == before
    key = floating_keys(state)[0]
    state[key].view(-1)[0] += 1e-6
    assert weights_hash(state) != before
