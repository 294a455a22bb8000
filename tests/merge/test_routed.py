"""The routed merge as a plan: the copies, the gates over them, and the starting mixture."""

from __future__ import annotations

import pytest
import torch

from polytask.arch import ARCHS
from polytask.config import ModelSpec
from polytask.errors import ConfigError
from polytask.merge.routed import check_routable, route_plan, route_state, train_routers
from polytask.model import build_model, model_from_plan
from polytask.nn.encoders import TabularEncoder


def built(arch: str, **fields):
    torch.manual_seed(0)
    spec = ModelSpec(
        arch=arch, hidden=[5], num_experts=2, tower_hidden=[], embedding_dim=2, **fields
    )
    return spec, build_model(spec, [3, 4], 4, [1, 1], ["a", "b"]).eval()


def routed_model(spec, model, runs):
    plan = route_plan(model.plan, [0], [f"task:{k}" for k in range(len(runs))])
    routed = model_from_plan(plan, spec, [1, 1], ["a", "b"], lambda: TabularEncoder([3, 4], 4, 2))
    shapes = {k: v.shape for k, v in routed.state_dict().items()}
    state = route_state(model.state_dict(), runs, model.plan, [0], shapes)
    routed.load_state_dict(state)
    return plan, routed.eval()


def perturbed(model, seed):
    generator = torch.Generator().manual_seed(seed)
    return {
        k: v + 0.3 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }


def rows(count=9):
    generator = torch.Generator().manual_seed(5)
    from polytask.features import Features

    return Features(
        torch.randint(0, 3, (count, 2), generator=generator),
        torch.randn(count, 4, generator=generator),
    )


def test_shared_bottom_becomes_one_router_over_every_runs_copy_starting_uniform():
    spec, model = built("shared_bottom")
    runs = [perturbed(model, k) for k in range(3)]
    plan, routed = routed_model(spec, model, runs)
    level = plan.levels[0]
    assert level.experts.count == 3 and level.experts.owners == ["task:0", "task:1", "task:2"]
    assert level.gates.kind == "softmax" and level.gates.allowed == [[0, 1, 2]]
    assert plan.task_gates == model.plan.task_gates
    x = routed.encoders[0](rows().categorical, rows().numeric)
    with torch.no_grad():
        out = routed.arch(x).tasks[0]
        experts = routed.arch.levels[0].experts(x)  # [3, B, D]: run k's bottom is copy k
    torch.testing.assert_close(out, experts.mean(0))
    bank = routed.arch.levels[0].experts
    for k in range(3):
        torch.testing.assert_close(
            bank.weights[0][k], runs[k]["arch.levels.0.experts.weights.0"][0]
        )


def test_mmoe_gates_start_as_their_own_mixture_of_the_runs_average():
    spec, model = built("mmoe")
    runs = [perturbed(model, k) for k in range(2)]
    plan, routed = routed_model(spec, model, runs)
    assert plan.levels[0].experts.count == 4
    assert plan.levels[0].gates.allowed == [[0, 1, 2, 3]] * 2
    x = routed.encoders[0](rows().categorical, rows().numeric)
    with torch.no_grad():
        out = routed.arch(x).tasks
        copies = routed.arch.levels[0].experts(x).view(2, 2, x.shape[0], -1)  # [E, K, B, D]
        gates = model.arch.levels[0].gates(x)  # the base gates' weights [G, B, E]
    for g in range(2):
        expected = torch.einsum("be,ebd->bd", gates[g], copies.mean(1))
        torch.testing.assert_close(out[g], expected, rtol=1e-5, atol=1e-6)


def test_only_mlp_levels_with_identity_or_softmax_gates_are_routed():
    with pytest.raises(ConfigError, match="dselect"):
        check_routable(ARCHS.get("dselect_k").plan(2, ModelSpec(arch="dselect_k")), [0])
    home = ARCHS.get("home").plan(2, ModelSpec(arch="home"))
    with pytest.raises(ConfigError, match="level"):
        check_routable(home, list(range(len(home.levels))))
    with pytest.raises(ConfigError, match=r"levels 0\.\.0"):
        check_routable(ARCHS.get("mmoe").plan(2, ModelSpec(arch="mmoe")), [3])


def test_router_training_moves_the_gates_only():
    spec, model = built("shared_bottom")
    _, routed = routed_model(spec, model, [perturbed(model, k) for k in range(2)])
    before = {k: v.clone() for k, v in routed.state_dict().items()}
    batch = rows(16)

    def loss(network):
        logits = network(batch).logits[0]
        p = torch.sigmoid(logits)
        return -(p * torch.log(p) + (1 - p) * torch.log(1 - p)).mean()

    history = train_routers(routed, [0], loss, steps=30, lr=0.1)
    assert history[-1] < history[0]
    after = routed.state_dict()
    for key, value in before.items():
        moved = not torch.equal(value, after[key])
        assert moved == key.startswith("arch.levels.0.gates."), key


def test_a_task_owned_gate_starts_leaning_to_its_own_runs_copies():
    spec, model = built("mmoe")
    runs = [perturbed(model, k) for k in range(2)]
    plan = route_plan(model.plan, [0], ["task:0", "task:1"])
    routed = model_from_plan(plan, spec, [1, 1], ["a", "b"], lambda: TabularEncoder([3, 4], 4, 2))
    shapes = {k: v.shape for k, v in routed.state_dict().items()}
    bias = float(torch.log(torch.tensor(3.0)))
    state = route_state(model.state_dict(), runs, model.plan, [0], shapes, {0: [0, None]}, bias)
    routed.load_state_dict(state)
    x = routed.encoders[0](rows().categorical, rows().numeric)
    with torch.no_grad():
        weights = routed.arch.levels[0].gates(x)  # [G, B, E K], copy e K + k
    # gate 0 belongs to run 0: its copies weigh 3 times the other run's; gate 1 is shared
    torch.testing.assert_close(
        weights[0, :, 0::2] / weights[0, :, 1::2], torch.full((9, 2), 3.0), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(weights[1, :, 0::2], weights[1, :, 1::2])


def test_the_source_objective_is_the_cross_entropy_of_each_rows_run():
    from polytask.merge.routed import source_loss

    count, experts = 2, 3
    slices = [slice(0, 2), slice(2, 5)]
    uniform = torch.full((1, 5, experts * count), 1.0 / (experts * count))
    assert torch.isclose(source_loss(uniform, slices, count), torch.log(torch.tensor(2.0)))
    right = torch.zeros(1, 5, experts * count)
    right[0, :2, 0::2] = 1.0 / experts  # run 0's rows on run 0's copies (e K + 0)
    right[0, 2:, 1::2] = 1.0 / experts
    assert float(source_loss(right, slices, count)) == 0.0
