"""Task towers: one MLP head per task, all computed as one fused expert bank."""

from __future__ import annotations

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
        self.last_first_layer: torch.Tensor | None = None

    def __getstate__(self) -> dict:
        """Copies and pickles leave out the last step's graph-carrying tensor."""
        return {**super().__getstate__(), "last_first_layer": None}

    @property
    def first_layer(self) -> ExpertBank:
        """The bank holding every tower's first layer (the hidden one, or the output)."""
        return self.hidden if self.hidden is not None else self.output

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [T, B, in] (tower t reads slice t) or [B, in] (every tower reads the same rows:
        then all first layers are ONE [B, in] x [in, T * width] product, where a T-batched
        product over an expanded input would redo the input's strides T times, forward and
        backward). ``last_first_layer`` keeps that product's output [T, B, width] (before the
        activation), whose gradient gives each task's gradient at x cheaply (see
        :func:`polytask.balance.jacobian.common_input_gramian`)."""
        self.last_first_layer = None
        if x.dim() == 2:
            first = self.first_layer
            self.last_first_layer = first.linear(x, 0)
            x = first(first.activate(self.last_first_layer, 0), start=1)
            if self.hidden is not None:
                x = self.output(x)
            logits = x
        else:
            if self.hidden is not None:
                x = self.hidden(x)
            logits = self.output(x)  # [T, B, max_out]
        return [logits[t, :, :width] for t, width in enumerate(self.out_dims)]
