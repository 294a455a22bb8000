"""Routing by row computes the dense model's function at the asked (row, task) pairs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from polytask.arch import ARCHS
from polytask.balance import BALANCERS
from polytask.config import ModelSpec, TrainSpec
from polytask.features import Features
from polytask.model import MultiTaskModel, build_model
from polytask.nn import row_routing
from polytask.nn.experts import ExpertBank
from polytask.nn.paired_gates import PairedSoftmaxGates
from polytask.nn.row_routing import (
    RowPairs,
    pair_linear,
    pair_mlp,
    reads_own_encoder,
    worth_routing,
)
from polytask.tasks import Task
from polytask.train.optim import build_optimizer
from polytask.train.step import train_step

ROWS = 40
# (arch, options, tasks, whether the last level is routed by row, not only the towers)
CASES: list[tuple[str, dict[str, Any], int, bool]] = [
    ("shared_bottom", {}, 5, False),  # one gate every task reads: towers only
    ("omoe", {}, 5, False),
    ("mmoe", {}, 5, True),
    ("cgc", {"task_experts": 1, "shared_experts": 2}, 4, True),  # dense gate layout
    ("cgc", {"task_experts": 2, "shared_experts": 1}, 14, True),  # paired gate layout
    ("ple", {"levels": 2, "task_experts": 1, "shared_experts": 2}, 12, True),
    ("task_moe", {}, 5, False),  # top-k gates: the last level runs densely
    ("home", {}, 4, False),
    ("cross_stitch", {}, 3, False),
    ("single", {}, 5, True),  # one encoder per task, each run on its task's pairs
]


def make_model(
    arch: str, options: dict[str, Any], tasks: int, out_dims: list[int] | None = None
) -> MultiTaskModel:
    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, hidden=[6], num_experts=3, tower_hidden=[4], options=options)
    out_dims = out_dims or [1 + (t % 3) for t in range(tasks)]  # heads of several widths
    return build_model(spec, [5, 4], 3, out_dims, [f"t{t}" for t in range(tasks)])


def make_features(tasks: int, share: float = 0.3) -> Features:
    generator = torch.Generator().manual_seed(1)
    categorical = torch.stack(
        [torch.randint(0, 5, (ROWS,), generator=generator), torch.randint(0, 4, (ROWS,))], 1
    )
    numeric = torch.randn(ROWS, 3, generator=generator)
    wanted = torch.rand(ROWS, tasks, generator=generator) < share
    return Features(categorical, numeric, wanted)


@pytest.mark.parametrize(("arch", "options", "tasks", "routed"), CASES)
def test_routed_logits_equal_the_dense_ones_at_the_asked_pairs(arch, options, tasks, routed):
    model = make_model(arch, options, tasks).eval()
    features = make_features(tasks)
    assert model.row_routable and worth_routing(features.wanted)
    assert (getattr(model.arch, "last_route", None) is not None) == routed
    dense = model(features.asking(None)).logits
    sparse = model(features).logits
    for t in range(tasks):
        asked = features.wanted[:, t]
        torch.testing.assert_close(sparse[t][asked], dense[t][asked])
        assert torch.count_nonzero(sparse[t][~asked]) == 0
        assert sparse[t].shape == dense[t].shape


@pytest.mark.parametrize(("arch", "options", "tasks", "routed"), CASES)
def test_routed_gradients_equal_the_dense_ones(arch, options, tasks, routed):
    """A loss on the asked pairs alone gives every parameter the same gradient both ways."""
    features = make_features(tasks)
    grads = []
    for ask in (None, features.wanted):
        model = make_model(arch, options, tasks).train()
        logits = model(features.asking(ask)).logits
        loss = sum(
            (values[features.wanted[:, t]] ** 2).sum() * (t + 1) for t, values in enumerate(logits)
        )
        assert isinstance(loss, torch.Tensor)
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_the_paired_gate_layout_is_the_one_routed():
    model = make_model("cgc", {"task_experts": 2, "shared_experts": 1}, 14)
    assert isinstance(model.arch.level_modules[-1].gates, PairedSoftmaxGates)


def test_many_asked_pairs_run_the_dense_pass(monkeypatch):
    model = make_model("mmoe", {}, 5).eval()
    features = make_features(5, share=0.9)
    assert not worth_routing(features.wanted)
    called = []
    monkeypatch.setattr(model, "_forward_pairs", lambda *a: called.append(a))
    logits = model(features).logits
    assert not called and all(torch.count_nonzero(values) == values.numel() for values in logits)


@pytest.mark.parametrize("limit", [row_routing.GATHER_LIMIT, 0])
def test_pair_linear_is_each_rows_expert_layer(monkeypatch, limit):
    """Gathered weights, or (limit 0) one product per expert over unsorted rows."""
    monkeypatch.setattr(row_routing, "GATHER_LIMIT", limit)
    torch.manual_seed(2)
    weight, bias = torch.randn(4, 3, 5), torch.randn(4, 1, 5)
    x, expert = torch.randn(9, 3), torch.tensor([2, 0, 2, 3, 1, 0, 3, 3, 2])
    expected = torch.stack([x[i] @ weight[e] + bias[e, 0] for i, e in enumerate(expert)])
    torch.testing.assert_close(pair_linear(x, weight, bias, expert), expected)


def test_pair_mlp_is_each_rows_expert():
    torch.manual_seed(3)
    bank = ExpertBank(3, 4, [5, 2], activate_last=False)
    x, expert = torch.randn(6, 4), torch.tensor([0, 0, 1, 2, 2, 2])
    full = bank(x)  # [E, B, out]: every expert on every row
    torch.testing.assert_close(pair_mlp(bank, x, expert), full[expert, torch.arange(6)])


def test_scatter_puts_each_pair_at_its_row():
    wanted = torch.tensor([[True, False], [True, True], [False, True]])
    pairs = RowPairs.of(wanted)
    assert pairs.tasks.tolist() == [0, 0, 1, 1] and pairs.rows.tolist() == [0, 1, 1, 2]
    values = torch.arange(8.0).view(4, 2)
    first, second = pairs.scatter(values, [1, 2])
    assert first.tolist() == [[0.0], [2.0], [0.0]]
    assert second.tolist() == [[0.0, 0.0], [4.0, 5.0], [6.0, 7.0]]


def binary_tasks(count: int) -> list[Task]:
    from polytask.config import TaskSpec

    return [
        Task(TaskSpec(name=f"t{t}", kind="binary", target=f"y{t}"), out_dim=1) for t in range(count)
    ]


@pytest.mark.parametrize(
    ("arch", "options"), [("cgc", {"task_experts": 1, "shared_experts": 2}), ("single", {})]
)
def test_a_training_step_on_sparse_labels_routes_and_updates_as_the_dense_step(
    monkeypatch, arch, options
):
    tasks = 6
    features = make_features(tasks).asking(None)
    generator = torch.Generator().manual_seed(5)
    labelled = torch.rand(ROWS, tasks, generator=generator) < 0.25
    values = (torch.rand(ROWS, tasks, generator=generator) < 0.5).float()
    labels = {
        f"t{t}": values[:, t].masked_fill(~labelled[:, t], float("nan")) for t in range(tasks)
    }
    task_list = binary_tasks(tasks)
    states = []
    routed_calls = []
    for share in (-1.0, row_routing.ROUTE_SHARE):
        monkeypatch.setattr(row_routing, "ROUTE_SHARE", share)
        model = make_model(arch, options, tasks, [1] * tasks)
        original = model._forward_pairs
        monkeypatch.setattr(
            model, "_forward_pairs", lambda f, p, o=original: routed_calls.append(1) or o(f, p)
        )
        optimizer = build_optimizer(list(model.parameters()), TrainSpec(lr=0.01))
        balancer = BALANCERS.get("equal")(tasks)
        train_step(model, features, labels, task_list, balancer, optimizer, torch.ones(tasks), 0)
        states.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert len(routed_calls) == 1  # the dense run did not route, the other did
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, msg=name)


def test_per_task_encoders_run_on_their_pairs_only_where_no_other_task_reads_them():
    spec = ModelSpec(arch="single", hidden=[6], tower_hidden=[4])
    plan = ARCHS.get("single").plan(3, spec)
    assert reads_own_encoder(plan)
    level = plan.levels[0]
    crossed = level.model_copy(
        update={"experts": level.experts.model_copy(update={"reads": [1, 0, 2]})}
    )
    assert not reads_own_encoder(plan.model_copy(update={"levels": [crossed]}))
    assert not reads_own_encoder(plan.model_copy(update={"encoders": "shared"}))


@pytest.mark.parametrize("stacked", [True, False])
def test_single_encodes_only_the_asked_rows_in_either_way(monkeypatch, stacked):
    """Alike tabular encoders: one gather from their stacked tables; else (here: the stack
    over the gather limit) each encoder on its task's asked rows. Both give the dense
    logits at the asked pairs."""
    if not stacked:
        monkeypatch.setattr(row_routing, "GATHER_LIMIT", 0)
    model = make_model("single", {}, 5).eval()
    features = make_features(5)
    dense = model(features.asking(None)).logits
    seen: list[int] = []
    for encoder in model.encoders:
        original = encoder.forward
        monkeypatch.setattr(
            encoder, "forward", lambda c, n, f=original: seen.append(len(c)) or f(c, n)
        )
    sparse = model(features).logits
    assert sum(seen) == (0 if stacked else int(features.wanted.sum()))
    for t in range(5):
        asked = features.wanted[:, t]
        torch.testing.assert_close(sparse[t][asked], dense[t][asked])


def test_single_without_its_own_pair_route_spreads_the_pairs_and_still_equals_dense(
    monkeypatch,
):
    """Where the level is not one plain bank (a grown one), the pairs' encodings are spread
    into the [T, B, D] layout of one encoder per task and the level routed as usual."""
    model = make_model("single", {}, 5).eval()
    features = make_features(5)
    dense = model(features.asking(None)).logits
    monkeypatch.setattr(type(model.arch), "forward_own_pairs", lambda self, v, p: None)
    spread = []
    original = type(model.arch).forward_pairs
    monkeypatch.setattr(
        type(model.arch),
        "forward_pairs",
        lambda self, x, p: spread.append(tuple(x.shape)) or original(self, x, p),
    )
    sparse = model(features).logits
    assert spread and spread[0][:2] == (5, len(features))  # [T, B, D]
    for t in range(5):
        asked = features.wanted[:, t]
        torch.testing.assert_close(sparse[t][asked], dense[t][asked])
