"""Task arithmetic and simple averaging, from their definitions."""

from __future__ import annotations

import torch

from polytask.merge.average import average
from polytask.merge.task_arithmetic import task_arithmetic


def states(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(5, 4, generator=generator), "b": torch.randn(4, generator=generator)}
    tuned = [
        {k: v + torch.randn(v.shape, generator=generator) for k, v in base.items()}
        for _ in range(3)
    ]
    return base, tuned


def vectors(base, tuned):
    return [{k: t[k] - base[k] for k in base} for t in tuned]


def test_one_task_with_coefficient_one_gives_back_the_fine_tuned_model():
    base, tuned = states()
    merged = task_arithmetic(base, vectors(base, tuned[:1]), scaling=1.0)
    for key in base:
        assert torch.allclose(merged[key], tuned[0][key], atol=1e-6)


def test_the_sum_of_task_vectors_is_scaled():
    base, tuned = states(1)
    merged = task_arithmetic(base, vectors(base, tuned), scaling=0.3)
    for key in base:
        expected = base[key] + 0.3 * sum(t[key] - base[key] for t in tuned)
        assert torch.allclose(merged[key], expected, atol=1e-6)


def test_averaging_is_the_mean_over_the_runs_that_hold_each_element():
    base, tuned = states(2)
    held = [{k: torch.ones_like(v, dtype=torch.bool) for k, v in base.items()} for _ in tuned]
    merged = average(base, tuned, held)
    for key in base:
        assert torch.allclose(merged[key], sum(t[key] for t in tuned) / 3, atol=1e-6)
    # run 2 holds nothing of "b" (its value there is the base's): the mean is over runs 0, 1
    held[2]["b"][:] = False
    tuned[2]["b"] = base["b"].clone()
    merged = average(base, tuned, held)
    assert torch.allclose(merged["b"], (tuned[0]["b"] + tuned[1]["b"]) / 2, atol=1e-6)
