"""Task-specific bottoms: per-task feature gates, a hypernetwork-made low-rank transform."""

from __future__ import annotations

import pytest
import torch

import polytask
from polytask.config import parse_spec
from polytask.errors import ConfigError
from polytask.nn.executor import PlanNetwork
from polytask.nn.task_bottom import TaskBottomBank
from tests.arch.helpers import network
from tests.conftest import base_spec, make_table


def _arch(num_tasks: int = 3, **options) -> PlanNetwork:
    return network("task_bottom", 7, num_tasks, hidden=[6, 5], options=options)


def _bank(arch: PlanNetwork) -> TaskBottomBank:
    """The bank of task views (expert t is task t's view)."""
    bank = arch.levels[0].experts
    assert isinstance(bank, TaskBottomBank)
    return bank


def _randomise_hypernetwork(arch: PlanNetwork) -> None:
    """Leave the LoRA-style zero start, so that tasks' transforms differ."""
    with torch.no_grad():
        _bank(arch).transform.hyper[-1].weight.normal_()
        _bank(arch).transform.hyper[-1].bias.normal_()


def test_shapes_and_per_task_gates_in_the_open_unit_interval():
    torch.manual_seed(0)
    arch = _arch(se_hidden=4, task_embedding_dim=3, hyper_rank=2, transform_dim=9)
    x = torch.randn(11, 7)
    assert arch(x).tasks.shape == (3, 11, 5)
    gates = _bank(arch).feature_gates(x)
    assert gates.shape == (3, 11, 7)
    assert (gates > 0).all() and (gates < 1).all()
    assert not torch.allclose(gates[0], gates[1])  # each task weighs features its own way


def test_zeroed_hypernetwork_gives_every_task_the_shared_transform():
    torch.manual_seed(1)
    arch = _arch()
    transform = _bank(arch).transform
    _randomise_hypernetwork(arch)
    x = torch.randn(5, 7).expand(3, -1, -1)  # the same input for every task
    differs = transform(x)
    assert not torch.allclose(differs[0], differs[1])
    with torch.no_grad():
        transform.hyper[-1].weight.zero_()
        transform.hyper[-1].bias.zero_()
    shared = torch.relu(x[0] @ transform.weight + transform.bias)
    out = transform(x)
    for t in range(3):
        torch.testing.assert_close(out[t], shared)


def test_transform_is_shared_weight_plus_each_tasks_low_rank_product():
    torch.manual_seed(2)
    arch = _arch(hyper_rank=2)
    _randomise_hypernetwork(arch)
    transform = _bank(arch).transform
    x = torch.randn(3, 4, 7)
    u, v = transform.factors()
    assert u.shape == (3, 7, 2) and v.shape == (3, 7, 2)
    out = transform(x)
    for t in range(3):
        weight = transform.weight + u[t] @ v[t].T  # rank-2 correction of task t
        expected = torch.relu(x[t] @ weight + transform.bias)
        torch.testing.assert_close(out[t], expected, rtol=1e-4, atol=1e-5)


def test_hypernetwork_starts_at_the_shared_transform_but_still_learns():
    torch.manual_seed(3)
    arch = _arch()
    transform = _bank(arch).transform
    _, v = transform.factors()
    assert torch.count_nonzero(v) == 0
    loss = arch(torch.randn(6, 7)).tasks.sum()
    (grad,) = torch.autograd.grad(loss, [transform.hyper[-1].weight])
    assert torch.count_nonzero(grad) > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hyper_rank": 0}, r"hyper_rank: .*greater than or equal to 1"),
        ({"task_embeding_dim": 4}, r"did you mean 'task_embedding_dim'"),
    ],
)
def test_bad_options_are_rejected_naming_the_key(options, message):
    spec = base_spec("unused.csv", model={"arch": "task_bottom", "options": options})
    with pytest.raises(ConfigError, match=message):
        parse_spec(spec)


def test_trains_end_to_end_on_every_task_kind(tmp_path):
    path = tmp_path / "table.csv"
    make_table(n=160).to_csv(path, index=False)
    spec = base_spec(
        path,
        model={"arch": "task_bottom", "options": {"se_hidden": 4, "hyper_rank": 2}},
        train={"epochs": 2},
    )
    predictor = polytask.train(spec, out=tmp_path / "run", progress=False)
    predictions = predictor.predict(make_table(n=10, seed=7))
    assert "click" in predictions.columns and predictions.notna().all().all()
