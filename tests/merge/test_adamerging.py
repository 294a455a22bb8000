"""AdaMerging lowers the entropy it minimises."""

from __future__ import annotations

import torch

from polytask.merge.adamerging import adamerge, combine


def toy():
    """A linear softmax classifier, two tasks' fine-tuned weights, unlabelled rows of each."""
    generator = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(6, 4, generator=generator) * 0.1, "b": torch.zeros(4)}
    tuned = []
    rows = []
    for k in range(2):
        centre = torch.randn(6, generator=generator) * 2
        x = centre + torch.randn(64, 6, generator=generator)
        rows.append(x)
        direction = torch.zeros(6, 4)
        direction[:, 2 * k] = centre
        tuned.append({"w": base["w"] + 0.5 * direction, "b": torch.zeros(4)})
    vectors = [{k: t[k] - base[k] for k in base} for t in tuned]

    def objective(state):
        total = torch.zeros(())
        for x in rows:
            log_p = torch.log_softmax(x @ state["w"] + state["b"], dim=-1)
            total = total - (log_p.exp() * log_p).sum(-1).mean()
        return total

    return base, vectors, objective


def test_task_wise_and_layer_wise_coefficients_lower_the_entropy():
    base, vectors, objective = toy()
    for granularity in ("task", "layer"):
        start = float(objective(combine(base, vectors, torch.full((2,), 0.3), list(base))))
        merged, coefficients, history = adamerge(
            base, vectors, objective, granularity, init=0.3, steps=100, lr=0.05
        )
        assert history[0] == start
        assert float(objective(merged)) < 0.8 * start
        assert coefficients.shape == ((2,) if granularity == "task" else (2, 2))
        # both tasks' weight vectors sharpen their rows (the biases did not move: λ stays)
        weight_column = coefficients if granularity == "task" else coefficients[:, 0]
        assert bool((weight_column > 0.3).all())


def test_clamping_keeps_coefficients_in_the_unit_interval():
    base, vectors, objective = toy()
    _, coefficients, _ = adamerge(base, vectors, objective, "task", 0.9, 50, 0.1, clamp=True)
    assert bool(((coefficients >= 0) & (coefficients <= 1)).all())
