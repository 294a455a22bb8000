"""Sharing architectures: MMoE against a manual computation, shared-bottom sharing, and
exact independence of single-task networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from polytask.arch import ARCHS
from polytask.errors import ConfigError
from tests.arch.helpers import network
from tests.conftest import model_and_batch


def mlp(x: torch.Tensor, weights, biases, index: int) -> torch.Tensor:
    for weight, bias in zip(weights, biases, strict=True):
        x = F.relu(F.linear(x, weight[index].T, bias[index, 0]))
    return x


def test_mmoe_equals_a_manual_loop_over_its_own_weights():
    torch.manual_seed(0)
    net = network("mmoe", 5, 2, hidden=[6, 4], num_experts=3)
    level = net.levels[0]
    x = torch.randn(7, 5)
    result = net(x)
    out = result.tasks
    assert out.shape == (2, 7, 4)
    experts = [mlp(x, level.experts.weights, level.experts.biases, e) for e in range(3)]
    gates = level.gates  # weight [G, in, E], bias [G, 1, E]: one linear map per gate
    for t in range(2):
        gate = torch.softmax(F.linear(x, gates.weight[t].T, gates.bias[t, 0]), dim=-1)  # [B, E]
        expected = sum(gate[:, e : e + 1] * experts[e] for e in range(3))
        torch.testing.assert_close(out[t], expected, rtol=1e-5, atol=1e-6)
    assert result.task_gates is not None and result.task_gates.shape == (2, 7, 3)
    torch.testing.assert_close(result.task_gates.sum(-1), torch.ones(2, 7))


def test_shared_bottom_gives_every_task_the_same_representation():
    torch.manual_seed(1)
    net = network("shared_bottom", 5, 3, hidden=[4])
    x = torch.randn(6, 5)
    result = net(x)
    out = result.tasks
    assert out.shape == (3, 6, 4)
    bottom = net.levels[0].experts
    expected = mlp(x, bottom.weights, bottom.biases, 0)
    for t in range(3):
        torch.testing.assert_close(out[t], expected)
    assert result.common is not None  # towers read the one representation once
    torch.testing.assert_close(result.common, expected)


def test_single_runs_one_bottom_per_task_on_its_own_input():
    torch.manual_seed(2)
    net = network("single", 5, 2, hidden=[4])
    bottoms = net.levels[0].experts
    x = torch.randn(2, 6, 5)
    out = net(x).tasks
    for t in range(2):
        torch.testing.assert_close(
            out[t], mlp(x[t], bottoms.weights, bottoms.biases, t), rtol=1e-5, atol=1e-6
        )


LISTED = [name for name in ARCHS.names() if ARCHS.get(name).listed]


@pytest.mark.parametrize("name", LISTED)
def test_registered_archs_meet_the_contract(name):
    net = network(name, 4, 3, hidden=[6, 3], num_experts=2)
    per_task = net.plan.encoders == "per_task"
    x = torch.randn(3, 5, 4) if per_task else torch.randn(5, 4)
    assert net(x).tasks.shape == (3, 5, 3)
    assert net.out_dim == 3


def test_unknown_arch_in_registry():
    with pytest.raises(ConfigError, match=r"unknown architecture 'mmoee' \(did you mean 'mmoe'"):
        ARCHS.get("mmoee")


# ---------------------------------------------------------------------- whole model
def test_single_task_losses_touch_only_their_own_parameters():
    model, tasks, features, labels = model_and_batch("single")
    assert len(model.encoders) == len(tasks)
    outputs = model(features).logits
    params = list(model.parameters())
    index = {id(p): i for i, p in enumerate(params)}
    for a, task in enumerate(tasks):
        loss = task.loss(outputs[a], labels[task.name])
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        for b in range(len(tasks)):
            for name, param in model.encoders[b].named_parameters():
                grad = grads[index[id(param)]]
                own = a == b
                nonzero = grad is not None and torch.count_nonzero(grad) > 0
                assert nonzero == own, f"task {a}, encoder {b} {name}"
            for owner in (model.arch, model.towers):
                for name, param in owner.named_parameters():
                    grad = grads[index[id(param)]]
                    # fused tensors hold one block per task on the first axis
                    touched = torch.count_nonzero(grad[b]) > 0
                    assert touched == (a == b), f"task {a} -> {name}[{b}]"


def test_shared_bottom_losses_do_reach_the_shared_network():
    """The contrast case: with sharing, one task's loss moves the shared parameters."""
    model, tasks, features, labels = model_and_batch("shared_bottom")
    loss = tasks[0].loss(model(features).logits[0], labels[tasks[0].name])
    weight = model.arch.levels[0].experts.weights[0]
    (grad,) = torch.autograd.grad(loss, [weight])
    assert torch.count_nonzero(grad) > 0


@pytest.mark.parametrize("arch", ["mmoe", "shared_bottom", "single"])
def test_model_outputs_one_logit_block_per_task(arch):
    model, tasks, features, _ = model_and_batch(arch)
    outputs = model(features).logits
    assert [tuple(o.shape) for o in outputs] == [(64, t.out_dim) for t in tasks]
    assert [t.out_dim for t in tasks] == [1, 3, 1, 2]
