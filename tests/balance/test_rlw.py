"""Random loss weighting: fresh weights on the simplex every step, reproducible from a seed."""

from __future__ import annotations

import pytest
import torch

from polytask.balance import BALANCERS, StepContext
from polytask.balance.rlw import RandomLossWeighting
from tests.balance.toy import assert_absent_task_is_ignored, resume_matches


def _draws(balancer: RandomLossWeighting, count: int, present=None) -> torch.Tensor:
    present = present or [True] * balancer.num_tasks
    rows = []
    for step in range(count):
        losses = torch.ones(balancer.num_tasks, requires_grad=True)
        context = StepContext(torch.tensor(present), torch.ones(balancer.num_tasks), step)
        rows.append(balancer.backward(losses, context))
        torch.testing.assert_close(losses.grad, rows[-1])  # the gradient of sum_t w_t L_t
    return torch.stack(rows)


@pytest.mark.parametrize("distribution", ["normal", "dirichlet"])
def test_weights_are_a_distribution_and_vary(distribution):
    weights = _draws(RandomLossWeighting(4, distribution=distribution, seed=3), 20)
    assert bool((weights > 0).all())
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(20))
    assert weights.std(dim=0).min() > 0.01  # random, not fixed


def test_normal_draws_are_the_softmax_of_the_seeded_normals():
    weights = _draws(RandomLossWeighting(3, seed=7), 2)
    generator = torch.Generator().manual_seed(7)
    for row in weights:
        normals = torch.randn(3, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(row, torch.softmax(normals, dim=0).float())


def test_reproducible_from_the_seed():
    first = _draws(RandomLossWeighting(3, seed=1), 5)
    torch.testing.assert_close(_draws(RandomLossWeighting(3, seed=1), 5), first)
    assert not torch.allclose(_draws(RandomLossWeighting(3, seed=2), 5), first)


def test_absent_task_gets_no_weight_and_present_ones_still_sum_to_one():
    assert_absent_task_is_ignored(RandomLossWeighting(3))
    for distribution in ("normal", "dirichlet"):
        weights = _draws(RandomLossWeighting(3, distribution=distribution), 4, [True, False, True])
        assert bool((weights[:, 1] == 0).all())
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(4))
    nothing = _draws(RandomLossWeighting(2), 1, [False, False])
    assert nothing.tolist() == [[0.0, 0.0]]


def test_state_round_trip_continues_the_stream():
    balancer = RandomLossWeighting(3, distribution="dirichlet", seed=5)
    _draws(balancer, 3)
    other = RandomLossWeighting(3, distribution="dirichlet", seed=99)
    other.load_state_dict(balancer.state_dict())
    torch.testing.assert_close(_draws(other, 4), _draws(balancer, 4))


def test_registry_and_options():
    assert BALANCERS.get("rlw") is RandomLossWeighting
    with pytest.raises(ValueError, match=r"distribution .*one of 'normal', 'dirichlet'"):
        RandomLossWeighting(2, distribution="uniform")
    for bad in (-1, 1.5, "0", True):
        with pytest.raises(ValueError, match=r"options\.seed .*expected an integer >= 0"):
            RandomLossWeighting(2, seed=bad)


def test_training_run_and_resume(tmp_path, table_csv):
    resume_matches(tmp_path, table_csv, "rlw", distribution="dirichlet", seed=4)
