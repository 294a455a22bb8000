"""GEM's dual QP is solved exactly: the solution satisfies the KKT conditions of
min_{v >= m} v^T (G G^T + eps I) v / 2 + (G g)^T v, and with m = eps = 0 the projected
gradient G^T v + g meets every constraint G g~ >= 0; it is the primal QP's solution, and the
hook leaves a step gradient that conflicts with no memory's."""

from __future__ import annotations

import pytest
import torch

from polytask.grow.data import concat
from polytask.grow.strategies._gradients import flat_grad, loss_grad
from polytask.grow.strategies.agem import AGEMOptions, AveragedProjection
from polytask.grow.strategies.base import rows_loss
from polytask.grow.strategies.gem import EpisodicConstraints, GEMOptions, gem_dual
from tests.grow.conftest import multiclass_task, tiny_model, tiny_rows


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


@pytest.mark.parametrize("seed", range(4))
def test_projection_is_the_primal_qp_solution_of_an_independent_solver(seed):
    """g~ = G^T v + g (margin 0, eps 0) is argmin |g~ - g|^2 / 2 s.t. G g~ >= 0, as scipy's
    SLSQP finds it on the primal problem directly."""
    from scipy.optimize import minimize

    generator = torch.Generator().manual_seed(seed)
    constraints = torch.randn(3, 8, generator=generator, dtype=torch.float64)
    gradient = -constraints[0] + 0.3 * torch.randn(8, generator=generator, dtype=torch.float64)
    v = gem_dual(constraints @ constraints.T, constraints @ gradient, 0.0, 0.0)
    projected = constraints.T @ v + gradient
    g, matrix = gradient.numpy(), constraints.numpy()
    primal = minimize(
        lambda x: 0.5 * ((x - g) ** 2).sum(),
        g,
        jac=lambda x: x - g,
        constraints=[{"type": "ineq", "fun": lambda x: matrix @ x, "jac": lambda x: matrix}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert primal.success
    torch.testing.assert_close(projected, torch.from_numpy(primal.x), atol=1e-6, rtol=0)


def test_the_step_gradient_after_the_hook_conflicts_with_no_memory():
    """On a model: after EpisodicConstraints, the gradient written into .grad has a
    non-negative inner product with every old task's memory gradient (margin 0, eps 0)."""
    model = tiny_model([3, 3, 3])
    old = [multiclass_task("t0", 3), multiclass_task("t1", 3)]
    memories = [
        (task, tiny_rows(20, {task.name: torch.randint(0, 3, (20,)).float()}, seed=i))
        for i, task in enumerate(old)
    ]
    parameters = [p for p in model.parameters() if p.requires_grad]
    hook = EpisodicConstraints(memories, GEMOptions(margin=0.0, eps=0.0))
    new = multiclass_task("t2", 3)
    for seed in range(10):
        torch.manual_seed(seed)
        batch = tiny_rows(16, {"t2": torch.randint(0, 3, (16,)).float()}, seed=100 + seed)
        model.zero_grad(set_to_none=True)
        rows_loss(model, batch, [new]).backward()
        hook.before_update(model)
        step = flat_grad(parameters)
        for task, rows in memories:
            memory = loss_grad(rows_loss(model, rows, [task]), parameters)
            assert float(memory @ step) >= -1e-5 * float(memory.norm() * step.norm())
    assert hook.projected > 0  # some steps conflicted and were projected


def _hooked_grads(project: str, strategy: str, seed: int) -> tuple[dict, dict]:
    """The step's own gradients and those after the strategy's hook, by parameter name."""
    model = tiny_model([3, 3, 3])
    old = [multiclass_task("t0", 3), multiclass_task("t1", 3)]
    labels = torch.Generator().manual_seed(seed)
    memories = [
        (
            task,
            tiny_rows(
                20, {task.name: torch.randint(0, 3, (20,), generator=labels).float()}, seed=i
            ),
        )
        for i, task in enumerate(old)
    ]
    if strategy == "gem":
        hook: object = EpisodicConstraints(memories, GEMOptions(project=project))
    else:
        hook = AveragedProjection(
            concat([rows for _, rows in memories]),
            old,
            AGEMOptions(project=project),
            torch.Generator().manual_seed(0),
        )
    torch.manual_seed(seed)
    batch = tiny_rows(16, {"t2": torch.randint(0, 3, (16,)).float()}, seed=100 + seed)
    model.zero_grad(set_to_none=True)
    rows_loss(model, batch, [multiclass_task("t2", 3)]).backward()
    own = {n: p.grad.clone() if p.grad is not None else None for n, p in model.named_parameters()}
    hook.before_update(model)  # type: ignore[attr-defined]
    after = {n: p.grad for n, p in model.named_parameters()}
    return own, after


@pytest.mark.parametrize("strategy", ["gem", "agem"])
def test_stepped_projection_is_the_full_one_where_the_step_reached_and_zero_elsewhere(strategy):
    """project: stepped keeps the full projection's entries where the step's own gradient is
    non-zero, and leaves the old tasks' tower entries (no gradient of their own) at zero,
    where the full projection moves them."""
    for seed in range(40):
        own, full = _hooked_grads("all", strategy, seed)
        own_again, kept = _hooked_grads("stepped", strategy, seed)
        if all(torch.equal(full[n], own[n]) for n in own if own[n] is not None):
            continue  # the step agreed with the memories: nothing projected
        for name, grad in own.items():
            torch.testing.assert_close(own_again[name], grad)
            reached = grad != 0
            torch.testing.assert_close(kept[name][reached], full[name][reached], msg=name)
            assert not kept[name][~reached].any(), name
        towers = [n for n in own if n.startswith("towers.")]
        assert any(full[n][own[n] == 0].any() for n in towers)  # the full one moves old towers
        return
    pytest.fail("no step conflicted with the memories")
