"""Input encoders: turn preprocessed features into one dense vector per row."""

from __future__ import annotations

import torch
from torch import nn


class TabularEncoder(nn.Module):
    """All categorical columns looked up in one embedding table, then joined with numerics.

    One table with per-column offsets means a single gather for every categorical column,
    instead of one ``nn.Embedding`` call per column.

    Shapes: categorical [B, C] (int64), numeric [B, N] -> [B, C * embedding_dim + N].
    """

    offsets: torch.Tensor

    def __init__(self, cardinalities: list[int], numeric_width: int, embedding_dim: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.numeric_width = numeric_width
        self.num_categorical = len(cardinalities)
        offsets = torch.tensor([0, *cardinalities[:-1]], dtype=torch.int64).cumsum(0)
        self.register_buffer(
            "offsets", offsets if cardinalities else torch.zeros(0, dtype=torch.int64)
        )
        self.embedding = nn.Embedding(max(sum(cardinalities), 1), embedding_dim)
        self.out_dim = self.num_categorical * embedding_dim + numeric_width
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding.weight, std=0.05)

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.num_categorical:
            # index_select rather than nn.Embedding's forward: its backward is a scatter-add,
            # several times faster on CPU than embedding_dense_backward's sort
            rows = (categorical + self.offsets).flatten()
            embedded = self.embedding.weight.index_select(0, rows)  # [B * C, D]
            parts.append(embedded.view(categorical.shape[0], -1))
        if self.numeric_width:
            parts.append(numeric)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def extra_repr(self) -> str:
        return (
            f"categorical={self.num_categorical}, embedding_dim={self.embedding_dim}, "
            f"numeric={self.numeric_width}, out_dim={self.out_dim}"
        )


class NumericEncoder(nn.Module):
    """The F standardised numeric values as they are; categorical columns and the missing
    flags (the second half of ``numeric``) are not read. No parameters.

    Shapes: categorical [B, C] (unused), numeric [B, 2F] -> [B, F].
    """

    def __init__(self, numeric_width: int) -> None:
        super().__init__()
        self.out_dim = numeric_width // 2

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        return numeric[:, : self.out_dim]

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}"
