"""The functional core of gradient balancing: per-task gradients and their Gramian.

The T per-task gradients are obtained in ONE batched backward pass (``is_grads_batched``:
autograd vmaps the T one-hot output gradients through the graph) instead of T separate
passes; where an operation in the graph has no batching rule, it falls back to T passes.
The Gramian ``G[s, t] = <g_s, g_t>`` is summed tensor by tensor, so the [T, P] Jacobian is
never concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def task_gradients(
    losses: torch.Tensor, inputs: Sequence[torch.Tensor], retain_graph: bool = True
) -> list[torch.Tensor]:
    """Per-task gradients of ``losses`` [T] with respect to each input: list of [T, *shape].

    Inputs a task does not reach get zero rows (not ``None``), so callers need no special case.
    """
    num_tasks = losses.shape[0]
    eye = torch.eye(num_tasks, dtype=losses.dtype, device=losses.device)
    try:
        grads = torch.autograd.grad(
            losses,
            list(inputs),
            grad_outputs=eye,
            is_grads_batched=True,
            retain_graph=retain_graph,
            allow_unused=True,
        )
    except RuntimeError:  # an op without a vmap rule: one backward pass per task instead
        per_task = [
            torch.autograd.grad(losses[t], list(inputs), retain_graph=True, allow_unused=True)
            for t in range(num_tasks)
        ]
        grads = tuple(
            torch.stack([_zeros_if_none(g[i], x) for g in per_task]) for i, x in enumerate(inputs)
        )
    return [
        torch.zeros(num_tasks, *x.shape, dtype=x.dtype, device=x.device) if g is None else g
        for g, x in zip(grads, inputs, strict=True)
    ]


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def gramian(gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """``G = J J^T`` [T, T] from per-tensor gradient blocks [T, ...], summed block by block."""
    total: torch.Tensor | None = None
    for block in gradients:
        flat = block.reshape(block.shape[0], -1)
        part = flat @ flat.T
        total = part if total is None else total + part
    assert total is not None, "gramian() needs at least one gradient block"
    return total


def combine(weights: torch.Tensor, gradients: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``sum_t w_t g_t`` for every block: list of tensors shaped like the inputs."""
    return [torch.tensordot(weights.to(block.dtype), block, dims=1) for block in gradients]
