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

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.hidden is not None:
            x = self.hidden(x)
        logits = self.output(x)  # [T, B, max_out]
        return [logits[t, :, :width] for t, width in enumerate(self.out_dims)]
