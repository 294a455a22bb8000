"""The functional core of gradient balancing: per-task gradients and their Gramian.

The T per-task gradients are obtained in ONE batched backward pass (``is_grads_batched``:
autograd vmaps the T one-hot output gradients through the graph) instead of T separate
passes; where an operation in the graph has no batching rule, it falls back to T passes.
The Gramian ``G[s, t] = <g_s, g_t>`` is summed tensor by tensor, so the [T, P] Jacobian is
never concatenated.

Per-task gradients have a cheaper route when the task heads are separable
(:func:`separable_task_gradients`): a batched pass from the losses through T fused heads
materialises [T, T, ...] gradients of which only the T diagonal blocks are non-zero, while one
ordinary backward of ``sum_t L_t`` yields the same T blocks at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def batched_vjp(
    outputs: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    grad_outputs: torch.Tensor,
    retain_graph: bool = True,
) -> list[torch.Tensor | None]:
    """K vector-Jacobian products of ``outputs`` at once: ``grad_outputs`` [K, *outputs.shape]
    -> one [K, *input.shape] block per input, ``None`` for an input no output reaches.

    One vmapped backward pass; an operation without a batching rule makes it K passes.
    """
    try:
        grads = torch.autograd.grad(
            outputs,
            list(inputs),
            grad_outputs=grad_outputs,
            is_grads_batched=True,
            retain_graph=retain_graph,
            allow_unused=True,
        )
        return list(grads)
    except RuntimeError:  # an op without a vmap rule: one backward pass per row instead
        per_row = [
            torch.autograd.grad(
                outputs, list(inputs), grad_outputs=row, retain_graph=True, allow_unused=True
            )
            for row in grad_outputs
        ]
        return [
            None
            if all(g[i] is None for g in per_row)
            else torch.stack([_zeros_if_none(g[i], x) for g in per_row])
            for i, x in enumerate(inputs)
        ]


def task_gradients_or_none(
    losses: torch.Tensor, inputs: Sequence[torch.Tensor], retain_graph: bool = True
) -> list[torch.Tensor | None]:
    """Per-task gradients [T, *shape] of ``losses`` [T], ``None`` for an input no task reaches
    (so that a caller writing ``.grad`` can leave it untouched, as a plain backward would)."""
    num_tasks = losses.shape[0]
    eye = torch.eye(num_tasks, dtype=losses.dtype, device=losses.device)
    return batched_vjp(losses, inputs, eye, retain_graph=retain_graph)


def task_gradients(
    losses: torch.Tensor, inputs: Sequence[torch.Tensor], retain_graph: bool = True
) -> list[torch.Tensor]:
    """Per-task gradients of ``losses`` [T] with respect to each input: list of [T, *shape].

    Inputs a task does not reach get zero rows (not ``None``), so callers need no special case.
    """
    grads = task_gradients_or_none(losses, inputs, retain_graph)
    return zeros_for_unused(grads, inputs, losses.shape[0])


def zeros_for_unused(
    grads: Sequence[torch.Tensor | None], inputs: Sequence[torch.Tensor], rows: int
) -> list[torch.Tensor]:
    """``grads`` with each ``None`` replaced by ``rows`` zero rows [rows, *input.shape]."""
    return [
        torch.zeros(rows, *x.shape, dtype=x.dtype, device=x.device) if g is None else g
        for g, x in zip(grads, inputs, strict=True)
    ]


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def separable_task_gradients(
    losses: torch.Tensor,
    task_inputs: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    representation: torch.Tensor | None = None,
) -> list[torch.Tensor | None] | None:
    """Per-task gradients of ``losses`` [T] at each input: [T, *input.shape], ``None`` for an
    input no task reaches; the same as :func:`task_gradients_or_none`, computed cheaper.

    Only valid when loss t reads ``task_inputs`` [T, ...] through its slice t alone and reaches
    the inputs only through ``task_inputs`` (fused task towers over the architecture's output;
    the caller vouches for it). Then slice t of ``d(sum_s L_s)/d task_inputs`` IS task t's
    gradient there, from one ordinary backward pass through the towers instead of a T-batched
    one that carries [T, T, ...] mostly-zero gradients through them. From there:

    - ``task_inputs`` an ``expand`` of ``representation`` along the task axis (shared-bottom:
      every tower reads the same tensor): the expand's backward sums over the task axis, so
      task t's gradient at the representation is slice t itself, with no further pass; other
      inputs (parameters below it) get one batched pass from the representation down, with
      these T gradients;
    - otherwise (e.g. MMoE's per-task gate mixtures of the expert outputs): one batched
      vector-Jacobian product of the T slices (row t: slice t, zeros elsewhere) from
      ``task_inputs`` down to the inputs, through the architecture but not the towers.

    Returns ``None`` when ``losses`` do not reach ``task_inputs`` (the caller falls back).
    """
    num_tasks = losses.shape[0]
    if task_inputs.dim() < 1 or task_inputs.shape[0] != num_tasks:
        return None
    (slices,) = torch.autograd.grad(
        losses.sum(), [task_inputs], retain_graph=True, allow_unused=True
    )
    if slices is None:
        return None
    if representation is not None and is_task_expand(task_inputs, representation):
        at_representation = slices.reshape(num_tasks, *representation.shape)
        below = [x for x in inputs if x is not representation]
        grads = iter(batched_vjp(representation, below, at_representation) if below else [])
        return [at_representation if x is representation else next(grads) for x in inputs]
    eye = torch.eye(num_tasks, dtype=slices.dtype, device=slices.device)
    # row t: task t's slice in place t, zeros elsewhere: [T, *task_inputs.shape]
    rows = eye.view(num_tasks, num_tasks, *[1] * (slices.dim() - 1)) * slices.unsqueeze(0)
    return batched_vjp(task_inputs, inputs, rows)


def is_task_expand(task_inputs: torch.Tensor, representation: torch.Tensor) -> bool:
    """Whether ``task_inputs`` [T, *rest] is ``representation.expand(T, *rest)`` of a
    representation shaped ``rest`` or ``[1, *rest]`` (read from the autograd graph: an
    ``ExpandBackward0`` node whose input is exactly the representation's output)."""
    node = task_inputs.grad_fn
    source = representation.grad_fn
    if node is None or source is None or type(node).__name__ != "ExpandBackward0":
        return False
    rest = tuple(task_inputs.shape[1:])
    if tuple(representation.shape) not in (rest, (1, *rest)):
        return False
    return node.next_functions == ((source, representation.output_nr),)


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


def first_layer_deltas(losses: torch.Tensor, first_layer: torch.Tensor) -> torch.Tensor | None:
    """``d(sum_t L_t) / d first_layer`` [T, B, width], or ``None`` if no loss reaches it.

    ``first_layer`` is the towers' first layer (before its activation), [T, B, width], of
    which only tower t reads slice t: so slice t is task t's gradient there, and one ordinary
    backward through the towers' upper layers gives all T of them.
    """
    (delta,) = torch.autograd.grad(
        losses.sum(), [first_layer], retain_graph=True, allow_unused=True
    )
    return delta


def common_input_gradients(delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Task t's gradient at the input x that every tower's first layer ``x W_t + b_t`` reads:
    ``delta_t W_t^T``. delta [T, B, width], weight [T, D, width] -> [T, B, D]."""
    return torch.bmm(delta, weight.transpose(1, 2))


def common_input_gramian(delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The [T, T] Gramian of :func:`common_input_gradients` without forming them.

    ``<delta_s W_s^T, delta_t W_t^T> = <delta_s^T delta_t, W_s^T W_t>`` (Frobenius): two
    products of thin matrices, (T w)^2 (B + D) multiply-adds instead of T^2 B D, where w is
    the towers' first width (1 for linear heads). Used where that is cheaper.
    """
    tasks, rows, width = delta.shape
    dim = weight.shape[1]
    if width * width * (rows + dim) >= rows * dim:
        return gramian([common_input_gradients(delta, weight)])
    d = delta.permute(1, 0, 2).reshape(rows, tasks * width)
    w = weight.permute(1, 0, 2).reshape(dim, tasks * width)
    return ((d.T @ d) * (w.T @ w)).view(tasks, width, tasks, width).sum(dim=(1, 3))
