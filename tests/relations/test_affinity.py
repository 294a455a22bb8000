"""TAG's lookahead affinity and the gradient cosines, checked against their definitions by
brute force (a copy of the model stepped on one task's gradient, one task at a time)."""

from __future__ import annotations

import copy

import pytest
import torch

from polytask.config import parse_spec
from polytask.features import Features
from polytask.model import build_model
from polytask.relations.affinity import measure, shared_named_parameters
from polytask.train.prepare import prepare
from polytask.train.step import task_losses
from tests.conftest import base_spec


def _setup(table_csv, arch: str = "mmoe", rows: int = 48, double: bool = False):
    spec = parse_spec(
        base_spec(
            table_csv,
            model={
                "arch": arch,
                "embedding_dim": 3,
                "hidden": [6],
                "num_experts": 3,
                "tower_hidden": [4],
            },
        )
    )
    prepared = prepare(spec)
    torch.manual_seed(0)
    model = build_model(
        spec.model,
        prepared.preprocessor.cardinalities,
        prepared.preprocessor.numeric_width,
        [t.out_dim for t in prepared.tasks],
        [t.name for t in prepared.tasks],
    )
    train = prepared.splits["train"]
    index = torch.arange(rows)
    features = train.features.take(index)
    labels = {name: values[index] for name, values in train.labels.items()}
    if double:
        model = model.double()
        features = Features(features.categorical, features.numeric.double())
        labels = {name: values.double() for name, values in labels.items()}
    return model, features, labels, prepared.tasks


def _brute_force(model, features, labels, tasks, lr):
    """Z[i, j] and the gradients g_i, one task at a time on copies of the model."""
    losses, _ = task_losses(model(features).logits, labels, tasks)
    shared = list(shared_named_parameters(model).values())
    grads = [
        torch.autograd.grad(losses[i], shared, retain_graph=True, allow_unused=True)
        for i in range(len(tasks))
    ]
    grads = [
        [torch.zeros_like(p) if g is None else g for g, p in zip(gs, shared, strict=True)]
        for gs in grads
    ]
    before = losses.detach()
    rows = []
    for i in range(len(tasks)):
        stepped = copy.deepcopy(model)
        stepped_shared = list(shared_named_parameters(stepped).values())
        with torch.no_grad():
            for param, grad in zip(stepped_shared, grads[i], strict=True):
                param -= lr * grad
            after, _ = task_losses(stepped(features).logits, labels, tasks)
        rows.append(1.0 - after / before)
    flat = torch.stack([torch.cat([g.flatten() for g in gs]) for gs in grads])
    return torch.stack(rows), flat


@pytest.mark.parametrize("arch", ["mmoe", "shared_bottom", "ple"])
def test_affinity_is_the_lookahead_loss_ratio(table_csv, arch):
    model, features, labels, tasks = _setup(table_csv, arch)
    result = measure(model, features, labels, tasks, lr=0.5)
    expected, _ = _brute_force(model, features, labels, tasks, lr=0.5)
    assert result.valid.all()
    torch.testing.assert_close(result.affinity, expected, atol=2e-5, rtol=1e-4)
    assert (result.affinity.diagonal() > 0).all()  # a step on a task lowers its own loss


def test_cosine_is_that_of_the_task_gradients(table_csv):
    model, features, labels, tasks = _setup(table_csv)
    result = measure(model, features, labels, tasks, lr=0.1)
    _, flat = _brute_force(model, features, labels, tasks, lr=0.1)
    unit = flat / flat.norm(dim=1, keepdim=True)
    torch.testing.assert_close(result.cosine, unit @ unit.T, atol=1e-5, rtol=1e-4)


def test_small_steps_follow_the_first_order_expansion(table_csv):
    """L_j(theta - lr g_i) = L_j - lr <g_i, g_j> + O(lr^2): Z[i, j] -> lr <g_i, g_j> / L_j."""
    model, features, labels, tasks = _setup(table_csv, double=True)
    lr = 1e-6
    result = measure(model, features, labels, tasks, lr=lr)
    losses, _ = task_losses(model(features).logits, labels, tasks)
    _, flat = _brute_force(model, features, labels, tasks, lr=lr)
    first_order = lr * (flat @ flat.T) / losses.detach().unsqueeze(0)
    torch.testing.assert_close(result.affinity, first_order, rtol=1e-3, atol=1e-12)


def test_a_task_without_labels_is_left_out(table_csv):
    model, features, labels, tasks = _setup(table_csv)
    labels["spend"] = torch.full_like(labels["spend"], float("nan"))
    result = measure(model, features, labels, tasks, lr=0.5)
    index = [t.name for t in tasks].index("spend")
    assert not result.valid[index].any() and not result.valid[:, index].any()
    assert (result.affinity[index] == 0).all() and (result.affinity[:, index] == 0).all()
    others = [i for i in range(len(tasks)) if i != index]
    assert result.valid[others][:, others].all()


def test_measuring_changes_neither_weights_nor_random_stream(table_csv):
    model, features, labels, tasks = _setup(table_csv)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    measure(model, features, labels, tasks, lr=0.5)
    assert torch.equal(torch.get_rng_state(), state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(p.grad is None for p in model.parameters())
