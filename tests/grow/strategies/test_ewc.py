"""EWC against its definition: the Fisher diagonal is the mean squared per-row gradient (an
independent per-sample computation with torch.func), the penalty the closed form, and the
online accumulation decays the old Fisher."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch.func import functional_call, grad, vmap

from polytask.grow.strategies.ewc import EWC, EWCOptions, EWCPenalty, fisher_diagonal
from tests.grow.conftest import binary_task, tiny_model, tiny_rows


def test_fisher_with_one_row_per_batch_is_the_mean_squared_per_row_gradient():
    model = tiny_model([1]).eval()
    task = binary_task("t0")
    labels = (torch.rand(12, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    rows = tiny_rows(12, {"t0": labels})
    fisher = fisher_diagonal(model, rows, [task], batch=1)
    parameters = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def loss(params, numeric, label):
        features = type(rows.features)(rows.features.categorical[:1], numeric.unsqueeze(0))
        logits = functional_call(model, params, (features,)).logits[0]
        return task.loss(logits, label.unsqueeze(0))

    per_row = vmap(grad(loss), in_dims=(None, 0, 0))(parameters, rows.features.numeric, labels)
    for name, grads in per_row.items():
        torch.testing.assert_close(fisher[name], grads.square().mean(0), rtol=1e-5, atol=1e-8)


def test_penalty_is_half_lambda_fisher_weighted_squared_distance():
    model = tiny_model([1])
    generator = torch.Generator().manual_seed(2)
    fisher = {n: torch.rand(p.shape, generator=generator) for n, p in model.named_parameters()}
    anchor = {n: torch.randn(p.shape, generator=generator) for n, p in model.named_parameters()}
    penalty = EWCPenalty(model, fisher, anchor, strength=3.0).penalty(model, None, None)
    expected = 0.0
    for name, parameter in model.named_parameters():
        for value, f, a in zip(
            parameter.detach().flatten().tolist(),
            fisher[name].flatten().tolist(),
            anchor[name].flatten().tolist(),
            strict=True,
        ):
            expected += 0.5 * 3.0 * f * (value - a) ** 2
    assert abs(float(penalty.detach()) - expected) < 1e-4 * max(1.0, expected)


def test_online_fisher_decays_the_kept_one():
    model = tiny_model([1])
    task = binary_task("t0")
    strategy = EWC(EWCOptions(decay=0.25, fisher_batch=4, fisher_rows=None))
    rows = tiny_rows(8, {"t0": torch.ones(8)})

    context = SimpleNamespace(new_tasks=[task], rows=rows, generator=torch.Generator())
    strategy.fisher = {n: torch.full_like(p, 2.0) for n, p in model.named_parameters()}
    strategy.end(model, context)
    fresh = fisher_diagonal(model, rows, [task], batch=4)
    for name, value in fresh.items():
        torch.testing.assert_close(strategy.fisher[name], 0.25 * 2.0 + value)
        assert torch.equal(strategy.anchor[name], dict(model.named_parameters())[name].detach())
