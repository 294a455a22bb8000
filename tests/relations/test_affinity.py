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


def _repeated(features, labels, counts):
    """Row r repeated counts[r] times (0: left out)."""
    rows = torch.repeat_interleave(torch.arange(len(counts)), counts)
    return features.take(rows), {name: values[rows] for name, values in labels.items()}


def test_sample_weights_count_a_row_as_that_many_copies(table_csv):
    """data.weight's definition: an integer weight k counts a row exactly as k copies of it,
    so the weighted affinity and cosines equal the unweighted ones on the repeated rows."""
    model, features, labels, tasks = _setup(table_csv, double=True)
    counts = torch.tensor([0, 1, 2, 3] * (len(features) // 4))
    weights = {task.name: counts.double() for task in tasks}
    weighted = measure(model, features, labels, tasks, lr=0.5, weights=weights)
    copies = measure(model, *_repeated(features, labels, counts), tasks, lr=0.5)
    assert weighted.valid.all()
    torch.testing.assert_close(weighted.affinity, copies.affinity, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(weighted.cosine, copies.cosine, rtol=1e-9, atol=1e-12)
    plain = measure(model, features, labels, tasks, lr=0.5)
    assert not torch.allclose(weighted.affinity, plain.affinity)  # the weights did count


def test_weighted_affinity_is_the_lookahead_ratio_of_the_weighted_losses(table_csv):
    """Z[i, j] = 1 - L_j(theta - lr g_i) / L_j(theta), with L_j = sum(w * l) / sum(w) over
    the labelled rows and g_i the gradient of the weighted L_i, by hand for the binary task
    (per-row losses from the definition of binary cross-entropy)."""
    model, features, labels, tasks = _setup(table_csv, double=True)
    w = torch.linspace(0.1, 3.0, len(features), dtype=torch.float64)
    click = [t.name for t in tasks].index("click")
    y = labels["click"]
    present = ~y.isnan()

    def weighted_bce(m) -> torch.Tensor:
        p = torch.sigmoid(m(features).logits[click][:, 0])[present]
        per_row = -(y[present] * p.log() + (1 - y[present]) * (1 - p).log())
        return (w[present] * per_row).sum() / w[present].sum()

    loss = weighted_bce(model)
    shared = list(shared_named_parameters(model).values())
    grads = torch.autograd.grad(loss, shared, allow_unused=True)
    stepped = copy.deepcopy(model)
    with torch.no_grad():
        for param, grad in zip(shared_named_parameters(stepped).values(), grads, strict=True):
            if grad is not None:
                param -= 0.5 * grad
        expected = 1.0 - weighted_bce(stepped) / loss.detach()
    result = measure(model, features, labels, tasks, lr=0.5, weights={"click": w})
    torch.testing.assert_close(result.affinity[click, click], expected, rtol=1e-9, atol=1e-12)
