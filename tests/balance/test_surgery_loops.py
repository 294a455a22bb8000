"""PCGrad's and GradVac's coefficient rows, computed for all tasks at once, equal the
published one-pair-at-a-time loops (kept here, in scalar form, as the reference)."""

from __future__ import annotations

import math

import pytest
import torch

from polytask.balance.gradvac import MAX_TARGET, gradvac_coefficients
from polytask.balance.pcgrad import pcgrad_coefficients, task_orders


def _pcgrad_loop(gramian: torch.Tensor, orders: list[torch.Tensor]) -> torch.Tensor:
    matrix = gramian.double()
    coefficients = torch.eye(matrix.shape[0], dtype=torch.float64)
    for i, order in enumerate(orders):
        row = coefficients[i]
        for j in order.tolist():
            norm_sq = float(matrix[j, j])
            if j == i or norm_sq <= 0:
                continue
            inner = float(row @ matrix[:, j])
            if inner < 0:
                row[j] -= inner / norm_sq
    return coefficients


def _gradvac_loop(
    gramian: torch.Tensor, orders: list[torch.Tensor], targets: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    matrix = gramian.double()
    targets = targets.double().clone()
    norms = torch.diagonal(matrix).clamp(min=0.0).sqrt()
    coefficients = torch.eye(matrix.shape[0], dtype=torch.float64)
    for i, order in enumerate(orders):
        row = coefficients[i]
        for j in order.tolist():
            norm_i = math.sqrt(max(float(row @ matrix @ row), 0.0))
            norm_j = float(norms[j])
            if j == i or norm_i <= 0 or norm_j <= 0:
                continue
            phi = min(max(float(row @ matrix[:, j]) / (norm_i * norm_j), -1.0), 1.0)
            target = min(float(targets[i, j]), MAX_TARGET)
            if phi < target:
                root_target = math.sqrt(1.0 - target**2)
                gain = target * math.sqrt(1.0 - phi**2) - phi * root_target
                row[j] += norm_i * gain / (norm_j * root_target)
            targets[i, j] = (1.0 - beta) * targets[i, j] + beta * phi
    return coefficients, targets


def _conflicting_gramian(tasks: int, seed: int) -> torch.Tensor:
    """Gradients with many conflicts (a shared negative direction), one of them zero."""
    generator = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(tasks, 7, generator=generator, dtype=torch.float64)
    jacobian[1::2] -= 1.5 * jacobian[0]
    jacobian[tasks // 2] = 0.0
    gramian = jacobian @ jacobian.T
    return (gramian + gramian.T) / 2


@pytest.mark.parametrize(("tasks", "step"), [(1, 0), (2, 3), (5, 1), (9, 7), (12, 2)])
def test_pcgrad_rows_equal_the_pairwise_loop(tasks, step):
    gramian = _conflicting_gramian(tasks, step)
    orders = task_orders(tasks, step, 3)
    torch.testing.assert_close(pcgrad_coefficients(gramian, orders), _pcgrad_loop(gramian, orders))


@pytest.mark.parametrize(("tasks", "step", "beta"), [(1, 0, 0.5), (2, 3, 0.1), (5, 1, 0.5)])
@pytest.mark.parametrize("start", ["zero", "random"])
def test_gradvac_rows_and_targets_equal_the_pairwise_loop(tasks, step, beta, start):
    gramian = _conflicting_gramian(tasks, step + 10)
    orders = task_orders(tasks, step, 1)
    generator = torch.Generator().manual_seed(step)
    targets = torch.zeros(tasks, tasks, dtype=torch.float64)
    if start == "random":
        targets = torch.rand(tasks, tasks, generator=generator, dtype=torch.float64) * 2 - 1
        targets[0, -1] = 1.0  # above MAX_TARGET: clamped for the lift, not in the EMA
    expected = _gradvac_loop(gramian, orders, targets, beta)
    actual = gradvac_coefficients(gramian, orders, targets, beta)
    torch.testing.assert_close(actual[0], expected[0])
    torch.testing.assert_close(actual[1], expected[1])


def test_gradvac_over_several_steps_follows_the_loop():
    tasks = 9
    gramian = _conflicting_gramian(tasks, 4)
    targets = expected = torch.zeros(tasks, tasks, dtype=torch.float64)
    for step in range(4):
        orders = task_orders(tasks, step, 0)
        coefficients, targets = gradvac_coefficients(gramian, orders, targets, 0.3)
        reference, expected = _gradvac_loop(gramian, orders, expected, 0.3)
        torch.testing.assert_close(coefficients, reference)
        torch.testing.assert_close(targets, expected)
