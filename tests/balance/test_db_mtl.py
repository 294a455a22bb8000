"""DB-MTL: log-losses, then an EMA of each task's shared gradient rescaled to the largest norm;
towers get the plain gradient of sum_t log L_t."""

from __future__ import annotations

import math

import pytest
import torch

from polytask.balance import BALANCERS, StepContext
from polytask.balance.db_mtl import DBMTL, graph_leaves
from tests.balance.toy import assert_absent_task_is_ignored, resume_matches


class Linear:
    """rep = x W^T (shared W [2, 3]); task t: L_t = mean((rep v_t - y_t)^2) (tower v_t [2])."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.w = torch.randn(2, 3, generator=generator).requires_grad_()
        self.towers = [torch.randn(2, generator=generator).requires_grad_() for _ in range(2)]
        self.x = torch.randn(5, 3, generator=generator)
        self.y = torch.randn(5, 2, generator=generator) * 3

    def losses(self, w: torch.Tensor | None = None) -> torch.Tensor:
        rep = self.x @ (self.w if w is None else w).T
        return torch.stack(
            [((rep @ v - self.y[:, t]) ** 2).mean() for t, v in enumerate(self.towers)]
        )

    def log_gradients(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """By definition, from a fresh graph: grad_W log L_t and grad_v_t log L_t."""
        shared, own = [], []
        for t in range(2):
            w_grad, v_grad = torch.autograd.grad(
                torch.log(self.losses()[t]), [self.w, self.towers[t]]
            )
            shared.append(w_grad)
            own.append(v_grad)
        return shared, own

    def call(self, balancer: DBMTL, extra: torch.Tensor | None = None, present=(True, True)):
        self.w.grad = None
        for v in self.towers:
            v.grad = None
        context = StepContext(
            torch.tensor(present), torch.ones(2), 0, shared_params=[self.w], extra_loss=extra
        )
        return balancer.backward(self.losses(), context)


def _combination(averages: list[torch.Tensor]) -> torch.Tensor:
    norms = torch.stack([a.norm() for a in averages])
    alphas = norms.max() / (norms + 1e-8)
    return sum(alpha * a for alpha, a in zip(alphas, averages, strict=True))


def test_shared_gradient_is_the_normalised_ema_combination():
    model, balancer = Linear(), DBMTL(2, beta=0.9, beta_sigma=0.5)
    averages = [torch.zeros(2, 3), torch.zeros(2, 3)]
    for step in (1, 2, 3):
        shared, own = model.log_gradients()
        rate = 0.9 / step**0.5
        averages = [g + rate * (a - g) for a, g in zip(averages, shared, strict=True)]
        weights = model.call(balancer)
        torch.testing.assert_close(model.w.grad, _combination(averages))
        for t in range(2):  # towers: the plain gradient of sum_t log L_t
            torch.testing.assert_close(model.towers[t].grad, own[t])
        norms = torch.stack([a.norm() for a in averages])
        torch.testing.assert_close(weights, norms.max() / norms)
        with torch.no_grad():  # move, so that every step sees new gradients
            model.w -= 0.1 * model.w.grad
    assert balancer.steps.tolist() == [3, 3]


def test_auxiliary_loss_reaches_every_parameter_unweighted():
    model, plain = Linear(), DBMTL(2)
    model.call(plain)
    expected = model.w.grad.clone()
    model, balancer = Linear(), DBMTL(2)
    extra = 0.1 * (model.w**2).sum() + 0.5 * model.towers[0].sum()
    model.call(balancer, extra=extra)
    torch.testing.assert_close(model.w.grad, expected + 0.2 * model.w.detach())
    _, own = model.log_gradients()
    torch.testing.assert_close(model.towers[0].grad, own[0] + 0.5)
    torch.testing.assert_close(model.towers[1].grad, own[1])


def test_graph_leaves_finds_every_parameter_once():
    model = Linear()
    leaves = graph_leaves(model.losses())
    assert {id(leaf) for leaf in leaves} == {id(model.w), *(id(v) for v in model.towers)}
    assert len(leaves) == 3


def test_absent_task_is_ignored_and_its_average_frozen():
    assert_absent_task_is_ignored(DBMTL(3))
    model, balancer = Linear(), DBMTL(2)
    shared, _ = model.log_gradients()
    weights = model.call(balancer, present=(True, False))
    assert weights.tolist()[1] == 0.0
    assert balancer.steps.tolist() == [1, 0]
    assert balancer.averages is not None
    assert bool((balancer.averages[0][1] == 0).all())
    torch.testing.assert_close(model.w.grad, (1 - 0.9) * shared[0])  # alone: alpha = 1
    assert not model.towers[1].grad.any()  # zero: it is reached only through the stack


def test_state_round_trip():
    model, balancer = Linear(), DBMTL(2)
    model.call(balancer)
    other = DBMTL(2)
    other.load_state_dict(balancer.state_dict())
    model.call(balancer)
    expected = model.w.grad.clone()
    model.call(other)
    torch.testing.assert_close(model.w.grad, expected)
    assert DBMTL(2).state_dict()["averages"] is None


def test_registry_and_options():
    assert BALANCERS.get("db_mtl") is DBMTL
    with pytest.raises(ValueError, match=r"options\.beta \(db_mtl\): expected a number in \[0, 1"):
        DBMTL(2, beta=1.0)
    with pytest.raises(ValueError, match=r"options\.beta_sigma .*expected a number >= 0, got -0.5"):
        DBMTL(2, beta_sigma=-0.5)
    with pytest.raises(ValueError, match=r"options\.beta .*got nan"):
        DBMTL(2, beta=math.nan)


def test_training_run_and_resume(tmp_path, table_csv):
    resume_matches(tmp_path, table_csv, "db_mtl")
