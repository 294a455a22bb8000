"""The training step calls a strategy's hooks where the contract says, and only there."""

from __future__ import annotations

import torch

from polytask.balance import BALANCERS
from polytask.config import ModelSpec, TaskKind, TaskSpec
from polytask.features import Features
from polytask.model import build_model
from polytask.tasks import Task
from polytask.train.hooks import HookChain, StepHooks
from polytask.train.step import train_step


class Recorder(StepHooks):
    def __init__(self, log: list[str], penalty: float) -> None:
        self.log, self.weight = log, penalty

    def batch(self, features, labels):
        self.log.append("batch")
        doubled = Features(torch.cat([features.categorical] * 2), torch.cat([features.numeric] * 2))
        return doubled, {k: torch.cat([v] * 2) for k, v in labels.items()}

    def penalty(self, model, features, output):
        self.log.append(f"penalty rows={len(features)}")
        return self.weight * sum(p.square().sum() for p in model.parameters())

    def before_update(self, model):
        self.log.append("before")
        for parameter in model.parameters():
            self.grads = [*getattr(self, "grads", []), parameter.grad.clone()]

    def after_update(self, model):
        self.log.append("after")


def test_hooks_act_in_order_and_the_penalty_enters_the_objective():
    torch.manual_seed(0)
    spec = TaskSpec(name="y", kind=TaskKind.binary, target="y")
    model = build_model(ModelSpec(arch="shared_bottom"), [], 3, [1], ["y"])
    features = Features(torch.zeros(8, 0, dtype=torch.long), torch.randn(8, 3))
    labels = {"y": (torch.rand(8) > 0.5).float()}
    balancer = BALANCERS.get("equal")(1)
    log: list[str] = []
    hooks = HookChain([Recorder(log, 0.0), Recorder(log, 0.5)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    task = Task(spec, 1)
    train_step(model, features, labels, [task], balancer, optimizer, torch.ones(1), 0, hooks=hooks)
    assert log == [
        "batch",
        "batch",
        "penalty rows=32",
        "penalty rows=32",
        "before",
        "before",
        "after",
        "after",
    ]
    # gradient = plain loss gradient + 0.5 * 2 * parameter
    plain = build_model(ModelSpec(arch="shared_bottom"), [], 3, [1], ["y"])
    plain.load_state_dict(model.state_dict())
    rows = Features(torch.zeros(32, 0, dtype=torch.long), torch.cat([features.numeric] * 4))
    loss = Task(spec, 1).loss(plain(rows).logits[0], torch.cat([labels["y"]] * 4))
    loss.backward()
    for got, parameter in zip(hooks.hooks[1].grads, plain.parameters(), strict=True):
        plain_grad = torch.zeros_like(got) if parameter.grad is None else parameter.grad
        torch.testing.assert_close(got, plain_grad + parameter.detach())
