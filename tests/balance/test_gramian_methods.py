"""Contract tests shared by every Gramian-based method: absent tasks, zero gradients, both
gradient sources through the real training step, and option validation at config load.
(The short end-to-end runs are in test_gramian_methods_run.py, to keep each file fast.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polytask.balance import BALANCERS, StepContext
from polytask.balance.base import GramianWeighting
from polytask.config import ModelSpec, TaskSpec, parse_spec
from polytask.errors import ConfigError
from polytask.features import Features
from polytask.model import build_model
from polytask.tasks import Task
from polytask.train.step import train_step
from tests.conftest import base_spec

METHODS = [
    "mgda",
    "mgda_ub",
    "pcgrad",
    "gradvac",
    "cagrad",
    "imtl",
    "nash_mtl",
    "aligned_mtl",
    "upgrad",
]


class SharedBottom(nn.Module):
    """encoder -> representation -> one linear tower per task, with fixed data."""

    def __init__(self, num_tasks: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(3, 4)
        self.towers = nn.ModuleList(nn.Linear(4, 1) for _ in range(num_tasks))
        self.x = torch.randn(8, 3)
        self.y = torch.randn(8, num_tasks)

    def losses(self) -> torch.Tensor:
        self.representation = torch.tanh(self.encoder(self.x))
        out = torch.cat([tower(self.representation) for tower in self.towers], dim=1)
        return ((out - self.y) ** 2).mean(dim=0)


def test_every_method_is_a_registered_gramian_weighting():
    for method in METHODS:
        assert issubclass(BALANCERS.get(method), GramianWeighting)


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("method", METHODS)
def test_absent_task_gets_no_weight_and_no_gradient(method, mode):
    model = SharedBottom(3)
    balancer = BALANCERS.get(method)(3, mode=mode)
    for step in range(2):
        model.zero_grad(set_to_none=True)
        losses = model.losses()  # the absent task's loss is NOT zero: the balancer must drop it
        context = StepContext(
            present=torch.tensor([True, False, True]),
            static_weights=torch.ones(3),
            step=step,
            shared_params=list(model.encoder.parameters()),
            representation=model.representation,
        )
        weights = balancer.backward(losses, context)
        assert weights[1].item() == 0.0 and bool(torch.isfinite(weights).all())
        absent = model.towers[1].weight.grad
        assert absent is None or bool((absent == 0).all())
        for t in (0, 2):
            assert bool(model.towers[t].weight.grad.abs().sum() > 0)
        assert bool(torch.isfinite(model.encoder.weight.grad).all())


@pytest.mark.parametrize("method", METHODS)
def test_zero_gradient_task_and_single_task_stay_finite(method):
    balancer = BALANCERS.get(method)(3)
    jacobian = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0], [-0.5, 1.0, 0.2]])
    losses = torch.tensor([0.5, 0.0, 1.5])
    weights = balancer.weights_from_gramian(jacobian @ jacobian.T, losses)
    assert weights.shape == (3,) and bool(torch.isfinite(weights).all())
    zero = balancer.weights_from_gramian(torch.zeros(3, 3), losses)
    assert bool(torch.isfinite(zero).all())
    single = BALANCERS.get(method)(1).weights_from_gramian(torch.tensor([[2.0]]), losses[:1])
    assert single.tolist() == [1.0]


def _real_batch() -> tuple[nn.Module, Features, dict[str, torch.Tensor], list[Task]]:
    torch.manual_seed(0)
    tasks = [
        Task(TaskSpec(name="click", kind="binary", target="click"), out_dim=1),
        Task(TaskSpec(name="segment", kind="multiclass", target="segment"), out_dim=3),
        Task(TaskSpec(name="spend", kind="regression", target="spend"), out_dim=1),
    ]
    spec = ModelSpec(arch="mmoe", embedding_dim=2, hidden=[6], num_experts=2, tower_hidden=[4])
    model = build_model(spec, [3, 4], 4, [task.out_dim for task in tasks], ["a", "b", "c"])
    rows = 16
    features = Features(
        categorical=torch.stack([torch.randint(0, 3, (rows,)), torch.randint(0, 4, (rows,))], 1),
        numeric=torch.randn(rows, 4),
    )
    labels = {
        "click": torch.randint(0, 2, (rows,)).float(),
        "segment": torch.full((rows,), float("nan")),  # absent from this batch
        "spend": torch.randn(rows),
    }
    labels["click"][:3] = float("nan")
    return model, features, labels, tasks


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("method", METHODS)
def test_real_train_step_leaves_finite_gradients(method, mode):
    model, features, labels, tasks = _real_batch()
    balancer = BALANCERS.get(method)(len(tasks), mode=mode)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(2):
        result = train_step(
            model, features, labels, tasks, balancer, optimizer, torch.ones(3), step
        )
        assert result.present.tolist() == [True, False, True]
        assert result.weights[1].item() == 0.0 and bool(torch.isfinite(result.weights).all())
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
        assert any(bool(g.abs().sum() > 0) for g in grads)


BAD_OPTIONS = [
    ("mgda", {"bogus": 1}, "bogus"),
    ("mgda", {"normalize": "l1"}, "normalize"),
    ("mgda_ub", {"mode": "slow"}, "mode"),
    ("pcgrad", {"seed": -1}, "seed"),
    ("gradvac", {"beta": 2}, "beta"),
    ("cagrad", {"c": 1.5}, "c"),
    ("imtl", {"variant": "x"}, "variant"),
    ("nash_mtl", {"max_norm": 1.0}, "max_norm"),
    ("aligned_mtl", {"bogus": 1}, "bogus"),
    ("upgrad", {"every": 0}, "every"),
]


@pytest.mark.parametrize(("method", "options", "word"), BAD_OPTIONS)
def test_bad_options_are_rejected_when_the_config_loads(method, options, word):
    raw = base_spec("t.csv", balance={"method": method, "options": options})
    with pytest.raises(ConfigError, match=rf"^config: balance\.options\.{word} \({method}\): "):
        parse_spec(raw)


@pytest.mark.parametrize("method", METHODS)
def test_unknown_option_is_rejected_for_every_method(method):
    raw = base_spec("t.csv", balance={"method": method, "options": {"colour": "red"}})
    with pytest.raises(ConfigError, match=r"balance\.options\.colour .*unknown key"):
        parse_spec(raw)
    good = base_spec("t.csv", balance={"method": method, "options": {"mode": "fast"}})
    assert parse_spec(good).balance.options == {"mode": "fast"}
