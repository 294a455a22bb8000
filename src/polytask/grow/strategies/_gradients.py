"""Gradients as one flat vector over the trained parameters, for gradient surgery (A-GEM,
GEM): read from ``.grad``, computed for a loss, written back."""

from __future__ import annotations

import torch
from torch import nn


def flat_grad(parameters: list[nn.Parameter]) -> torch.Tensor:
    """The parameters' ``.grad`` as one vector (zeros where there is none)."""
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters]
    )


def loss_grad(loss: torch.Tensor, parameters: list[nn.Parameter]) -> torch.Tensor:
    """d loss / d parameters as one vector (zeros where the loss does not reach)."""
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, parameters, strict=True)
        ]
    )


def write_grad(parameters: list[nn.Parameter], vector: torch.Tensor) -> None:
    """Set every parameter's ``.grad`` from one vector."""
    start = 0
    for parameter in parameters:
        size = parameter.numel()
        parameter.grad = vector[start : start + size].view_as(parameter).clone()
        start += size


def where_stepped(projected: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """``projected`` where the step's own ``gradient`` is non-zero, else that gradient (zero):
    the projection kept to the entries the step's loss reached (Avalanche's A-GEM and GEM
    write it into the parameters that have a gradient; with polytask's fused towers the old
    tasks' towers are entries of a tensor the step reaches, so the mask is per entry)."""
    return torch.where(gradient != 0, projected, gradient)
