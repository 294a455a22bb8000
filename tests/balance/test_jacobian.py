"""Batched per-task gradients and the block-wise Gramian against explicit computations."""

from __future__ import annotations

import torch
from torch import nn

from polytask.balance.jacobian import combine, gramian, task_gradients


def _setup() -> tuple[list[torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    shared = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    only_task_0 = nn.Parameter(torch.randn(4))  # task 1 and 2 never reach it
    heads = nn.Linear(4, 3)
    x = torch.randn(6, 3)
    hidden = shared(x)
    out = heads(hidden)
    losses = torch.stack(
        [
            (out[:, 0] ** 2).mean() + (hidden @ only_task_0).mean(),
            (out[:, 1] - 1).abs().mean(),
            torch.sigmoid(out[:, 2]).sum(),
        ]
    )
    return [*shared.parameters(), only_task_0], losses


def test_batched_gradients_equal_per_task_autograd_loops():
    inputs, losses = _setup()
    batched = task_gradients(losses, inputs)
    for t in range(3):
        expected = torch.autograd.grad(losses[t], inputs, retain_graph=True, allow_unused=True)
        for block, grad, x in zip(batched, expected, inputs, strict=True):
            assert block.shape == (3, *x.shape)
            torch.testing.assert_close(block[t], torch.zeros_like(x) if grad is None else grad)
    assert bool((batched[-1][1:] == 0).all())  # unused input: zero rows, not None


def test_blockwise_gramian_and_combination_equal_explicit_concatenation():
    inputs, losses = _setup()
    blocks = task_gradients(losses, inputs)
    jacobian = torch.cat([block.reshape(3, -1) for block in blocks], dim=1)  # [T, n]
    torch.testing.assert_close(gramian(blocks), jacobian @ jacobian.T)
    weights = torch.tensor([0.5, -1.0, 2.0])
    combined = torch.cat([part.reshape(-1) for part in combine(weights, blocks)])
    torch.testing.assert_close(combined, weights @ jacobian)
