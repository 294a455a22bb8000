"""Task-based SAM: each task's gradient taken at its own worst-case perturbation of radius rho;
shared parameters get their equally weighted sum, towers their own task's SAM gradient."""

from __future__ import annotations

import pytest
import torch

from polytask.balance import BALANCERS, StepContext
from polytask.balance.sam import TaskSAM, perturbation
from tests.balance.toy import assert_absent_task_is_ignored, resume_matches, toy_step

RHO = 0.3


class Quadratic:
    """L_t = 1/2 (theta - a_t)^T A_t (theta - a_t) + 1/2 c_t ||phi_t - b_t||^2 (theta shared,
    phi_t task t's own parameters)."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.theta = torch.randn(3, generator=generator, dtype=torch.float64).requires_grad_()
        self.phis = [
            torch.randn(2, generator=generator, dtype=torch.float64).requires_grad_()
            for _ in range(2)
        ]
        roots = [torch.randn(3, 3, generator=generator, dtype=torch.float64) for _ in range(2)]
        self.matrices = [r @ r.T + torch.eye(3, dtype=torch.float64) for r in roots]
        self.centres = [torch.randn(3, generator=generator, dtype=torch.float64) for _ in range(2)]
        self.targets = [torch.randn(2, generator=generator, dtype=torch.float64) for _ in range(2)]
        self.curvatures = [0.5, 2.0]

    def losses(self) -> torch.Tensor:
        values = []
        for a, centre, phi, b, c in zip(
            self.matrices, self.centres, self.phis, self.targets, self.curvatures, strict=True
        ):
            shift = self.theta - centre
            values.append(0.5 * shift @ a @ shift + 0.5 * c * ((phi - b) ** 2).sum())
        return torch.stack(values)

    def closed_form(self, static: list[float]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """SAM gradients: A (theta + rho g/||g|| - a) for theta, likewise for each phi."""
        theta, shared = self.theta.detach(), torch.zeros(3, dtype=torch.float64)
        own = []
        for t, (a, centre) in enumerate(zip(self.matrices, self.centres, strict=True)):
            g = a @ (theta - centre)
            shared += static[t] * a @ (theta + RHO * g / g.norm() - centre)
            c, phi = self.curvatures[t], self.phis[t].detach()
            h = c * (phi - self.targets[t])
            own.append(static[t] * c * (phi + RHO * h / h.norm() - self.targets[t]))
        return shared, own


def _call(model: Quadratic, static=(1.0, 1.0), extra: torch.Tensor | None = None):
    context = StepContext(
        torch.tensor([True, True]),
        torch.tensor(static, dtype=torch.float64),
        0,
        shared_params=[model.theta],
        extra_loss=extra,
        recompute_losses=model.losses,
    )
    return TaskSAM(2, rho=RHO).backward(model.losses(), context)


def test_per_task_perturbed_gradients_equal_the_closed_form():
    model = Quadratic()
    before = [model.theta.detach().clone(), *(phi.detach().clone() for phi in model.phis)]
    weights = _call(model, static=(1.0, 0.5))
    shared, own = model.closed_form([1.0, 0.5])
    torch.testing.assert_close(model.theta.grad, shared)
    for phi, expected in zip(model.phis, own, strict=True):
        torch.testing.assert_close(phi.grad, expected)
    assert weights.tolist() == [1.0, 0.5]
    after = [model.theta, *model.phis]
    assert all(torch.equal(a.detach(), b) for a, b in zip(after, before, strict=True))


def test_auxiliary_loss_is_added_at_the_unperturbed_point():
    model = Quadratic()
    _call(model, extra=0.5 * (model.theta**2).sum())
    shared, _ = model.closed_form([1.0, 1.0])
    torch.testing.assert_close(model.theta.grad, shared + model.theta.detach())


def test_perturbation_has_radius_rho_and_is_zero_for_a_zero_gradient():
    blocks = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    shifted = perturbation(blocks, 0.5)
    norm = torch.sqrt(sum((b**2).sum() for b in shifted))
    assert norm.item() == pytest.approx(0.5)
    assert all(not b.any() for b in perturbation([torch.zeros(2)], 0.5))


def test_absent_task_is_ignored_and_needs_the_closure():
    assert_absent_task_is_ignored(TaskSAM(3))
    losses = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="recompute_losses"):
        TaskSAM(2).backward(losses, StepContext(torch.tensor([True, True]), torch.ones(2), 0))


def test_toy_parameters_are_restored_and_state_is_empty():
    balancer = TaskSAM(3)
    result = toy_step(balancer, [True, True, True])
    fresh = toy_step(TaskSAM(3), [True, True, True])  # same seed: same starting parameters
    for a, b in zip(result.model.parameters(), fresh.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert balancer.state_dict() == {}
    balancer.load_state_dict({})


def test_registry_and_options():
    assert BALANCERS.get("sam_task") is TaskSAM
    for bad in (0, -0.1, "big", float("nan")):
        with pytest.raises(ValueError, match=r"options\.rho \(sam_task\): expected a number > 0"):
            TaskSAM(2, rho=bad)


def test_training_run(tmp_path, table_csv):
    resume_matches(tmp_path, table_csv, "sam_task", rho=0.1)
