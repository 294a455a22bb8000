"""Task-level sparse MoE: sparse dispatch equals a dense reference, task routing gives an exact
sub-network, gradients stay on the selected experts, and the auxiliary terms match their
formulas."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import polytask
from polytask.arch import ARCHS
from polytask.arch.task_moe import TaskMoE
from polytask.nn.executor import PlanNetwork
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import mix_experts
from polytask.nn.topk import TopKGates, load_balancing_loss, task_expert_mutual_information
from tests.arch.helpers import network

ROUTINGS = ["task", "row"]
TASK_LOGITS, ROUTER = "levels.0.gates.task_logits", "levels.0.gates.router.weight"


def make_arch(
    routing: str, num_tasks: int = 3, num_experts: int = 4, in_dim: int = 5, **options: Any
) -> PlanNetwork:
    options = {"routing": routing, **options}
    return network(
        "task_moe", in_dim, num_tasks, hidden=[6, 4], num_experts=num_experts, options=options
    )


def router(arch: PlanNetwork) -> TopKGates:
    gates = arch.levels[0].gates
    assert isinstance(gates, TopKGates)
    return gates


def experts(arch: PlanNetwork) -> ExpertBank:
    bank = arch.levels[0].experts
    assert isinstance(bank, ExpertBank)
    return bank


def clean_logits(arch: PlanNetwork, x: torch.Tensor) -> torch.Tensor:
    """Router logits [T, B, E] straight from the parameters, without the arch's code path."""
    gates = router(arch)
    tasks, count = gates.num_gates, gates.num_experts
    if gates.task_logits is not None:
        return gates.task_logits.unsqueeze(1).expand(tasks, x.shape[0], count)
    assert gates.router is not None
    flat = F.linear(x, gates.router.weight, gates.router.bias)
    return flat.view(x.shape[0], tasks, count).transpose(0, 1)


def dense_reference(arch: PlanNetwork, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every row, mixed with the top-k-renormalised weights (zero elsewhere)."""
    logits = clean_logits(arch, x)
    values, selected = logits.topk(router(arch).top_k, dim=-1)
    gates = torch.zeros_like(logits).scatter(-1, selected, torch.softmax(values, dim=-1))
    return mix_experts(gates, experts(arch)(x))


def grads(arch: PlanNetwork, out: torch.Tensor, probe: torch.Tensor) -> dict[str, torch.Tensor]:
    params = dict(arch.named_parameters())
    values = torch.autograd.grad((out * probe).sum(), list(params.values()), allow_unused=True)
    return {
        name: torch.zeros_like(p) if g is None else g
        for (name, p), g in zip(params.items(), values, strict=True)
    }


# ---------------------------------------------------------------- (1) sparse == dense
@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("training", [False, True])
def test_sparse_dispatch_equals_the_dense_reference_in_value_and_gradient(routing, training):
    torch.manual_seed(0)
    arch = make_arch(routing, noise=0.0).train(training)  # noise off: reference is exact
    x = torch.randn(9, 5)
    out = arch(x).tasks
    expected = dense_reference(arch, x)
    assert out.shape == (3, 9, 4)
    torch.testing.assert_close(out, expected)
    probe = torch.randn_like(out)
    sparse, dense = grads(arch, out, probe), grads(arch, expected, probe)
    for name in sparse:
        torch.testing.assert_close(sparse[name], dense[name], msg=name)
    name = TASK_LOGITS if routing == "task" else ROUTER
    assert torch.count_nonzero(sparse[name]) > 0


@pytest.mark.parametrize("routing", ROUTINGS)
def test_noisy_training_routes_still_mix_exactly_their_gate_weights(routing):
    torch.manual_seed(1)
    arch = make_arch(routing, noise=1.0).train()
    x = torch.randn(8, 5)
    result = arch(x)
    assert result.task_gates is not None
    torch.testing.assert_close(result.tasks, mix_experts(result.task_gates, experts(arch)(x)))


# ---------------------------------------------------------------- (2) exact extraction
def test_task_routing_uses_exactly_task_experts_and_nothing_else_matters():
    torch.manual_seed(2)
    arch = make_arch("task", num_tasks=3, num_experts=6).eval()
    x = torch.randn(10, 5)
    result = arch(x)
    out = result.tasks
    chosen = router(arch).routes()
    assert len(chosen) == 3 and all(len(route) == 2 for route in chosen)
    gates = result.task_gates
    assert gates is not None
    for task, route in enumerate(chosen):
        used = (gates[task] > 0).nonzero()[:, 1].view(10, -1)  # experts used, per row
        assert (used == torch.tensor(route)).all()

        slim = copy.deepcopy(arch)
        others = [e for e in range(6) if e not in route]
        with torch.no_grad():
            for tensor in [*experts(slim).weights, *experts(slim).biases]:
                tensor[others] = 0.0
        assert torch.equal(slim(x).tasks[task], out[task])

        # the sub-network on its own: a k-expert bank sliced from the [E, in, out] layout
        bank = ExpertBank(len(route), 5, [6, 4])
        with torch.no_grad():
            for mine, full in zip(bank.parameters(), experts(arch).parameters(), strict=True):
                mine.copy_(full[route])
        mixed = mix_experts(gates[task : task + 1, :, route], bank(x))[0]
        torch.testing.assert_close(mixed, out[task])


# ---------------------------------------------------------------- (3) gradient routing
@pytest.mark.parametrize("routing", ROUTINGS)
def test_task_loss_gradients_reach_router_and_selected_experts_only(routing):
    torch.manual_seed(3)
    arch = make_arch(routing, num_tasks=2, num_experts=6, noise=0.0).train()
    gates = router(arch)
    with torch.no_grad():  # experts 4 and 5 can never win a top-2
        if gates.task_logits is not None:
            gates.task_logits[:, 4:] = -10.0
        else:
            assert gates.router is not None
            gates.router.bias.view(2, 6)[:, 4:] = -10.0
    x = torch.randn(7, 5)
    result = arch(x)
    out = result.tasks
    assert result.task_gates is not None
    used = (result.task_gates > 0).flatten(0, 1).any(0)  # [E]
    assert not used[4:].any() and used.any()
    grad = grads(arch, out, torch.randn_like(out))
    for name, g in grad.items():
        if name.startswith("levels.0.experts."):
            per_expert = g.flatten(1).abs().sum(1)
            assert (per_expert[used] > 0).all(), name
            assert (per_expert[~used] == 0).all(), name
    router_grad = grad[TASK_LOGITS] if routing == "task" else grad[ROUTER]
    assert torch.count_nonzero(router_grad) > 0

    # the auxiliary terms reach every router logit, so unselected experts can be picked later
    auxiliary = result.auxiliary
    assert auxiliary is not None and auxiliary.requires_grad
    if routing == "task":
        assert gates.task_logits is not None
        (aux_grad,) = torch.autograd.grad(auxiliary, [gates.task_logits])
        assert (aux_grad[:, 4:] != 0).all()


# ---------------------------------------------------------------- (4) auxiliary terms
def test_load_balancing_loss_on_a_hand_built_case():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    selected = torch.tensor([[0], [1]])
    # f = [1/2, 1/2, 0], P = [0.3, 0.45, 0.25]: 3 * (0.15 + 0.225)
    torch.testing.assert_close(load_balancing_loss(probs, selected), torch.tensor(1.125))
    uniform = torch.full((4, 4), 0.25)
    spread = torch.tensor([[0, 1], [2, 3], [1, 0], [3, 2]])
    torch.testing.assert_close(load_balancing_loss(uniform, spread), torch.tensor(1.0))


def test_mutual_information_is_log_t_for_disjoint_tasks_and_zero_for_identical_ones():
    disjoint = torch.eye(4)[:3]  # T=3 tasks, each on its own expert of E=4
    torch.testing.assert_close(task_expert_mutual_information(disjoint), torch.tensor(math.log(3)))
    pairs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])  # disjoint halves
    torch.testing.assert_close(task_expert_mutual_information(pairs), torch.tensor(math.log(2)))
    same = torch.tensor([0.1, 0.2, 0.3, 0.4]).expand(3, 4)
    torch.testing.assert_close(task_expert_mutual_information(same), torch.tensor(0.0))


def test_auxiliary_loss_combines_both_terms_with_their_weights():
    arch = make_arch("task", num_tasks=2, num_experts=4, noise=0.0, mi_weight=0.5)
    gates = router(arch)
    assert gates.task_logits is not None
    with torch.no_grad():
        gates.task_logits.copy_(torch.tensor([[30.0, 30.0, 0.0, 0.0], [0.0, 0.0, 30.0, 30.0]]))
    auxiliary = arch.train()(torch.randn(5, 5)).auxiliary
    # balanced (f = P = 1/4 each: balance 1) and disjoint (I = log 2)
    expected = 0.01 * 1.0 - 0.5 * math.log(2)
    assert auxiliary is not None
    torch.testing.assert_close(auxiliary, torch.tensor(expected))
    assert gates.routes() == [[0, 1], [2, 3]]
    assert arch.eval()(torch.randn(5, 5)).auxiliary is None


# ---------------------------------------------------------------- (5) gate weights
@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("training", [False, True])
def test_gate_weights_sum_to_one_over_exactly_k_experts(routing, training):
    torch.manual_seed(5)
    arch = make_arch(routing, num_experts=5, top_k=3).train(training)
    gates = arch(torch.randn(6, 5)).task_gates
    assert gates is not None and gates.shape == (3, 6, 5) and not gates.requires_grad
    torch.testing.assert_close(gates.sum(-1), torch.ones(3, 6))
    assert ((gates > 0).sum(-1) == 3).all()


# ---------------------------------------------------------------- (6) config and training
def test_registered_and_options_checked(spec_dict):
    assert ARCHS.get("task_moe") is TaskMoE
    spec_dict["model"] = {**spec_dict["model"], "arch": "task_moe", "options": {"top_kk": 2}}
    with pytest.raises(polytask.ConfigError, match="top_kk") as error:
        polytask.load_spec(spec_dict)
    assert "top_k" in str(error.value)  # the suggestion names the real key
    spec_dict["model"]["options"] = {"top_k": 4}  # the spec has 3 experts
    with pytest.raises(polytask.ConfigError, match=r"top_k: 4 is more than model\.num_experts"):
        polytask.load_spec(spec_dict)
    with pytest.raises(ValueError, match="routing 'task'"):
        router(make_arch("row")).routes()


@pytest.mark.parametrize("routing", ROUTINGS)
def test_trains_end_to_end(spec_dict, tmp_path: Path, routing):
    spec_dict["model"] = {**spec_dict["model"], "arch": "task_moe", "options": {"routing": routing}}
    spec_dict["train"] = {**spec_dict["train"], "epochs": 2}
    predictor = polytask.train(spec_dict, out=tmp_path / "run", progress=False)
    assert predictor.task_names == ["click", "segment", "spend", "tags"]
    report = json.loads((tmp_path / "run" / "experts.json").read_text())
    used = [sum(share > 0 for share in row) for row in report["utilisation"].values()]
    if routing == "task":  # in eval each task reads exactly its top-2 of the 3 experts
        assert used == [2, 2, 2, 2]
    else:
        assert all(2 <= n <= 3 for n in used)
