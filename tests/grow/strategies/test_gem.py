"""GEM's dual QP is solved exactly: the solution satisfies the KKT conditions of
min_{v >= m} v^T (G G^T + eps I) v / 2 + (G g)^T v, and with m = eps = 0 the projected
gradient G^T v + g meets every constraint G g~ >= 0."""

from __future__ import annotations

import pytest
import torch

from polytask.grow.strategies.gem import gem_dual


@pytest.mark.parametrize(("margin", "eps"), [(0.0, 0.0), (0.5, 1e-3), (0.0, 1e-3), (0.2, 0.0)])
@pytest.mark.parametrize("seed", range(6))
def test_dual_solution_meets_the_kkt_conditions(margin, eps, seed):
    generator = torch.Generator().manual_seed(seed)
    constraints = torch.randn(4, 60, generator=generator, dtype=torch.float64)
    gradient = -constraints.sum(0) + 0.5 * torch.randn(60, generator=generator, dtype=torch.float64)
    gramian, products = constraints @ constraints.T, constraints @ gradient
    v = gem_dual(gramian, products, margin, eps)
    slope = (gramian + eps * torch.eye(4, dtype=torch.float64)) @ v + products
    scale = float(gramian.diagonal().max())
    assert (v >= margin - 1e-10).all()  # primal feasibility of the dual
    assert (slope >= -1e-8 * scale).all()  # dual feasibility
    assert abs(float(torch.dot(v - margin, slope))) < 1e-8 * scale * max(1.0, float(v.sum()))
    if margin == 0.0 and eps == 0.0:
        projected = constraints.T @ v + gradient
        assert (constraints @ projected >= -1e-8 * scale).all()


def test_rank_deficient_memories_are_solved_too():
    generator = torch.Generator().manual_seed(9)
    row = torch.randn(1, 30, generator=generator, dtype=torch.float64)
    constraints = torch.cat(
        [row, 2 * row, torch.randn(1, 30, generator=generator, dtype=torch.float64)]
    )
    gradient = -row.flatten()
    v = gem_dual(constraints @ constraints.T, constraints @ gradient, 0.0, 0.0)
    projected = constraints.T @ v + gradient
    assert (constraints @ projected >= -1e-8).all()
