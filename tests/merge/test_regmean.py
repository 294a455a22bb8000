"""RegMean equals the least-squares merge of a linear layer, solved independently."""

from __future__ import annotations

import torch

from polytask.merge.base import Gram
from polytask.merge.regmean import regmean, regmean_matrix, shrink


def test_regmean_is_the_least_squares_weight_for_every_runs_outputs():
    generator = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(50, 6, generator=generator, dtype=torch.float64) * (k + 1) for k in range(3)
    ]
    weights = [torch.randn(6, 4, generator=generator, dtype=torch.float64) for _ in range(3)]
    merged = regmean_matrix(weights, [x.T @ x for x in inputs], alpha=1.0)
    stacked_x = torch.cat(inputs)
    stacked_y = torch.cat([x @ w for x, w in zip(inputs, weights, strict=True)])
    solution = torch.linalg.lstsq(stacked_x, stacked_y).solution
    assert torch.allclose(merged, solution, atol=1e-5)


def test_off_diagonal_shrinkage_moves_towards_a_diagonal_weighting():
    gram = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    assert torch.equal(shrink(gram, 0.25), torch.tensor([[2.0, 0.25], [0.25, 3.0]]))
    # with diagonal Grams every output column is a per-input weighted mean of the weights
    w1, w2 = torch.tensor([[1.0], [0.0]]), torch.tensor([[3.0], [4.0]])
    g1, g2 = torch.diag(torch.tensor([1.0, 1.0])), torch.diag(torch.tensor([3.0, 1.0]))
    merged = regmean_matrix([w1, w2], [g1, g2], alpha=0.0)
    assert torch.allclose(merged, torch.tensor([[2.5], [2.0]]), atol=1e-5)


def test_linear_layouts_banks_and_the_average_elsewhere():
    generator = torch.Generator().manual_seed(1)
    base = {"lin": torch.zeros(3, 4), "bank": torch.zeros(2, 4, 3), "bias": torch.zeros(3)}
    tuned = [
        {k: torch.randn(v.shape, generator=generator) for k, v in base.items()} for _ in range(2)
    ]
    held = [{k: torch.ones_like(v, dtype=torch.bool) for k, v in base.items()} for _ in tuned]
    xs = [torch.randn(30, 4, generator=generator) for _ in range(2)]
    grams = [
        {"lin": Gram(x.T @ x, input_last=True), "bank": Gram((x.T @ x).expand(2, 4, 4), False)}
        for x in xs
    ]
    merged = regmean(base, tuned, held, grams, alpha=1.0)
    lin = regmean_matrix([t["lin"].T for t in tuned], [x.T @ x for x in xs]).T  # [out, in]
    assert torch.allclose(merged["lin"], lin, atol=1e-5)
    for member in range(2):
        expected = regmean_matrix([t["bank"][member] for t in tuned], [x.T @ x for x in xs])
        assert torch.allclose(merged["bank"][member], expected, atol=1e-5)
    assert torch.allclose(merged["bias"], (tuned[0]["bias"] + tuned[1]["bias"]) / 2)
