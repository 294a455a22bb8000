"""SI against its definition: under plain SGD the path integral of one update is
lr * g^2 per entry, and the importance is the path over (total move^2 + xi)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from polytask.balance import BALANCERS
from polytask.errors import ConfigError
from polytask.grow.strategies.si import SI, SIOptions
from polytask.train.step import train_step
from tests.grow.conftest import binary_task, tiny_model, tiny_rows


def context_for(model, task, rows, old=()):
    return SimpleNamespace(
        model=model,
        origins={},
        old_tasks=list(old),
        new_tasks=[task],
        new=[task.name],
        rows=rows,
    )


def test_path_integral_and_importance_under_plain_sgd():
    model = tiny_model([1])
    task = binary_task("t0")
    rows = tiny_rows(16, {"t0": (torch.arange(16) % 2).float()})
    strategy = SI(SIOptions(c=1.0, xi=0.01))
    context = context_for(model, task, rows)
    hooks = strategy.begin(context)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr = 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for _ in range(3):
        train_step(
            model,
            rows.features,
            rows.labels,
            [task],
            BALANCERS.get("equal")(1),
            optimizer,
            torch.ones(1),
            0,
            hooks=hooks,
        )
        for name, grad in hooks.grads.items():
            expected[name] += lr * grad.square()  # -g * (-lr g)
    for name, path in hooks.path.items():
        torch.testing.assert_close(path, expected[name])
    strategy.end(model, context)
    for name, parameter in model.named_parameters():
        moved = (parameter.detach() - start[name]).square()
        torch.testing.assert_close(strategy.importance[name], expected[name] / (moved + 0.01))
        assert torch.equal(strategy.anchor[name], parameter.detach())


def test_si_refuses_a_run_without_importances():
    model = tiny_model([1, 1])
    rows = tiny_rows(4, {"t1": torch.ones(4)})
    context = context_for(model, binary_task("t1"), rows, old=[binary_task("t0")])
    try:
        SI(SIOptions()).begin(context)
    except ConfigError as error:
        assert "importances" in str(error)
    else:
        raise AssertionError("expected a ConfigError")
