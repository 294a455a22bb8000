"""Task towers: one MLP head per task, all computed as one fused expert bank."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from polytask.nn.experts import ExpertBank


class Towers(nn.Module):
    """T task heads ``in_dim -> hidden... -> out_dims[t]`` computed together.

    Heads with fewer outputs than the widest are padded in the fused output layer and sliced
    on the way out; the padding columns receive no gradient because they are never read.

    Shapes: x [T, B, in_dim] -> list of T tensors [B, out_dims[t]].
    """

    def __init__(
        self, in_dim: int, hidden: list[int], out_dims: list[int], dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.out_dims = list(out_dims)
        num_tasks = len(out_dims)
        self.hidden = (
            ExpertBank(num_tasks, in_dim, hidden, activate_last=True, dropout=dropout)
            if hidden
            else None
        )
        last_in = hidden[-1] if hidden else in_dim
        self.output = ExpertBank(num_tasks, last_in, [max(out_dims)], activate_last=False)

    @property
    def first_layer(self) -> ExpertBank:
        """The bank holding every tower's first layer (the hidden one, or the output)."""
        return self.hidden if self.hidden is not None else self.output

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [T, B, in] (tower t reads slice t) or [B, in] (every tower reads the same rows)."""
        if x.dim() == 2:
            return self.forward_common(x)[0]
        if self.hidden is not None:
            x = self.hidden(x)
        return self._split(self.output(x))  # [T, B, max_out]

    def forward_common(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every tower reading the same rows x [B, in]: all first layers are ONE [B, in] x
        [in, T * width] product, where a T-batched product over an expanded input would redo
        the input's strides T times, forward and backward. Also returns that product's output
        [T, B, width] (before the activation), whose gradient gives each task's gradient at
        x cheaply (see :func:`polytask.balance.jacobian.common_input_gramian`)."""
        first = self.first_layer
        pre_activation = first.linear(x, 0)
        out = first(first.activate(pre_activation, 0), start=1)
        if self.hidden is not None:
            out = self.output(out)
        return self._split(out), pre_activation

    def _split(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """One tensor per task. ``unbind``, not T indexings: the backward of an indexing
        allocates and fills a zero tensor of the whole [T, B, out] per task (T^2 work, a
        third of CGC's step at T = 150); unbind's stacks the T gradients once."""
        full = logits.shape[-1]
        return [
            row if width == full else row[:, :width]
            for row, width in zip(logits.unbind(0), self.out_dims, strict=True)
        ]

    def select(self, keep: Sequence[int]) -> Towers:
        """The kept tasks' towers, the fused output layer narrowed to their widest head."""
        out_dims = [self.out_dims[t] for t in keep]
        in_dim = self.first_layer.in_dim
        hidden = self.hidden.hidden if self.hidden is not None else []
        dropout = self.first_layer.dropout
        towers = Towers(
            in_dim, hidden, out_dims, dropout=dropout.p if isinstance(dropout, nn.Dropout) else 0.0
        )
        if self.hidden is not None:
            towers.hidden = self.hidden.select(keep)
        index, width = torch.tensor(list(keep)), max(out_dims)
        with torch.no_grad():
            towers.output.weights[0].copy_(self.output.weights[0][index, :, :width])
            towers.output.biases[0].copy_(self.output.biases[0][index, :, :width])
        return towers.train(self.training)
