"""Cross-stitch networks (Misra et al., CVPR 2016): one MLP column per task, the columns'
activations linearly mixed after every layer by a learned T x T cross-stitch matrix.

Sharing is learned rather than fixed: a diagonal matrix gives T independent networks, a
uniform one a shared network, and training moves between them per layer.
"""

from __future__ import annotations

import itertools

import torch
from pydantic import Field
from torch import nn

from polytask.arch.base import ARCHS, ArchOptions, SharingArch
from polytask.config import ModelSpec
from polytask.nn.experts import ExpertBank


class CrossStitchOptions(ArchOptions):
    init_self: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="each column's weight on itself at initialisation; the other columns "
        "share the rest, (1 - init_self) / (T - 1) each",
    )


def stitch_init(num_tasks: int, init_self: float) -> torch.Tensor:
    """[T, T] with ``init_self`` on the diagonal and rows summing to 1 (identity if T = 1)."""
    if num_tasks == 1:
        return torch.ones(1, 1)
    other = (1.0 - init_self) / (num_tasks - 1)
    return torch.full((num_tasks, num_tasks), other).fill_diagonal_(init_self)


@ARCHS.register("cross_stitch")
class CrossStitch(SharingArch):
    """T columns of ``spec.hidden`` layers, each layer one fused bank of T single-layer MLPs
    (column t is expert t), followed by a cross-stitch: ``x_t <- sum_s alpha[t, s] x_s``.

    The loop runs over layers only; each layer is one batched product for the columns and one
    einsum for the stitch. Stitch matrices live in one parameter ``stitches`` [L, T, T].

    Shapes: x [B, in] -> [T, B, hidden[-1]].
    """

    Options = CrossStitchOptions

    def __init__(self, in_dim: int, num_tasks: int, spec: ModelSpec) -> None:
        super().__init__(in_dim, num_tasks, spec)
        options: CrossStitchOptions = self.options  # type: ignore[assignment]
        sizes = [in_dim, *spec.hidden]
        self.columns = nn.ModuleList(
            ExpertBank(num_tasks, fan_in, [fan_out], dropout=spec.dropout)
            for fan_in, fan_out in itertools.pairwise(sizes)
        )
        init = stitch_init(num_tasks, options.init_self)
        self.stitches = nn.Parameter(init.repeat(len(spec.hidden), 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for column, stitch in zip(self.columns, self.stitches, strict=True):
            x = torch.einsum("ts,sbd->tbd", stitch, column(x))  # [T, B, width]
        return x
